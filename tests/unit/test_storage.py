"""Storage paths and URIs (config/storage.py) against a real S3-compatible server (moto, in-process)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ple_adatt.config import storage as st
from ple_adatt.config.loading import load_config
from ple_adatt.data.files import check_dataset, split_files
from ple_adatt.tracking.mlflow_tracking import resolve_tracking_uri
from s3_server import s3_server
from tiny_data import write_tiny_dataset

TINY = "configs/smoke/tiny.yaml"


@pytest.fixture(scope="module")
def s3():
    with s3_server("bkt") as env:
        yield env


def test_uris_stay_uris_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.storage_root("s3://bkt/runs") == "s3://bkt/runs"
    assert st.storage_root("runs") == str(tmp_path / "runs")
    assert st.join("s3://bkt/runs/", "a", "epoch_0001") == "s3://bkt/runs/a/epoch_0001"
    assert st.local_path("file:///x/y") == "/x/y" and st.local_path("s3://bkt/x") is None
    with pytest.raises(ValueError, match=r"run.storage_path=nope://x: not a URI pyarrow can open \(scheme .nope.\); use one of s3://"):
        st.storage_root("nope://x")


def test_relative_storage_inside_a_ray_job_says_what_to_set(tmp_path, monkeypatch):
    pkg = tmp_path / "runtime_resources/working_dir_files/_ray_pkg_abc"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    with pytest.raises(ValueError, match=r"run.storage_path=runs: inside a Ray job .*_ray_pkg_abc/runs.*set "
                                         r"run.storage_path to shared storage \(s3://"):
        st.storage_root("runs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    with pytest.raises(ValueError, match="inside a Ray job"):
        st.storage_root("runs")
    assert st.storage_root(str(tmp_path / "nfs")) == str(tmp_path / "nfs")  # absolute: the user's call
    assert st.storage_root("s3://bkt/runs") == "s3://bkt/runs"


def test_remote_storage_needs_a_tracking_server(tmp_path):
    with pytest.raises(ValueError, match=r"tracking.uri is unset and run.storage_path=s3://bkt/runs is remote"):
        resolve_tracking_uri(None, "s3://bkt/runs")
    assert resolve_tracking_uri("http://127.0.0.1:5000", "s3://bkt/runs") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(None, f"file://{tmp_path}") == f"sqlite:///{tmp_path}/mlflow.db"


def test_files_round_trip_through_the_bucket(s3, tmp_path):
    st.write_text("s3://bkt/a/b/c.txt", "hello")
    assert st.read_text("s3://bkt/a/b/c.txt") == "hello" and st.is_file("s3://bkt/a/b/c.txt")
    assert st.is_dir("s3://bkt/a") and not st.is_file("s3://bkt/a/missing")
    with st.staged("s3://bkt/a/report") as local:
        (local / "r.md").write_text("# r")
        (local / "plots").mkdir()
        (local / "plots" / "p.png").write_bytes(b"png")
    assert st.list_files("s3://bkt/a/report") == ["s3://bkt/a/report/plots/p.png", "s3://bkt/a/report/r.md"]
    with st.local_copy("s3://bkt/a/report") as d:
        assert open(f"{d}/plots/p.png", "rb").read() == b"png"
    with pytest.raises(FileNotFoundError, match="s3://bkt/nothing: no such folder"):
        with st.local_copy("s3://bkt/nothing"):
            pass


def test_a_dataset_uploaded_to_the_bucket_loads_and_validates(s3, tmp_path):
    local = write_tiny_dataset(tmp_path / "tiny", rows=120)
    st.upload_dir(local.parent if local.is_file() else local, "s3://bkt/data/tiny")
    ds_yaml = "s3://bkt/data/tiny/dataset.yaml"
    assert st.is_file(ds_yaml), st.list_files("s3://bkt/data")
    cfg = load_config(TINY, [f"dataset={ds_yaml}"])
    train = split_files(cfg.dataset, "train")
    assert train and all(f.startswith("s3://bkt/data/tiny/") and f.endswith(".parquet") for f in train)
    assert check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())["train"] > 0
    # a broken file in the bucket is reported with its URI, like a local one
    pq.write_table(pa.table({"x": [1]}), "s3://bkt/data/bad/train/part.parquet")
    spec = cfg.dataset.model_copy(update={"splits": cfg.dataset.splits.model_copy(
        update={"train": "s3://bkt/data/bad/train"})})
    with pytest.raises(ValueError, match=r"s3://bkt/data/bad/train/part.parquet: column '.*' .* is missing"):
        check_dataset(spec, ("train",), cfg.task_names())
    assert json.loads(json.dumps(yaml.safe_load(st.read_text(ds_yaml))))  # plain YAML, nothing rewritten


def test_fit_checks_where_results_go_before_reading_data_or_starting_ray(tiny_dataset, monkeypatch):
    import ray

    from ple_adatt.launch.fit import fit

    cfg = load_config(TINY, [f"dataset={tiny_dataset}", "run.storage_path=s3://bkt/runs"])
    with pytest.raises(ValueError, match="tracking.uri is unset and run.storage_path=s3://bkt/runs is remote"):
        fit(cfg)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # the README's old cluster command: no storage_path
    with pytest.raises(ValueError, match="run.storage_path=runs/smoke: inside a Ray job"):
        fit(load_config(TINY, [f"dataset={tiny_dataset}"]))
    assert not ray.is_initialized()
