"""Issue 18 pieces below the CLIs: full disk, half-built MLflow store, non-finite and extreme
features, unseen categories, duplicate prediction ids, MLflow filter quoting, checkpoint metrics."""
from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import DataError
from ple_adatt.data.preprocess import Packer, fit_preprocessing
from ple_adatt.data.quality import FeatureReport, feature_report
from ple_adatt.tracking.queries import quoted
from ple_adatt.tracking.store import StoreError, check_free_space, disk_full_message, incomplete_store, prepare_sqlite_store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/smoke/tiny.yaml"


def test_free_space_precheck_names_the_path_and_the_fix(tmp_path):
    check_free_space(tmp_path, 1)  # there is 1 MB free here
    with pytest.raises(StoreError, match=rf"MB free on the disk holding {tmp_path}/not/yet.*run.min_free_mb=1e\+12.*rerun the same command"):
        check_free_space(tmp_path / "not" / "yet", 1e12)  # a folder still to be created: its nearest parent
    check_free_space("s3://bucket/runs", 1e12)  # remote storage is not checked


def test_real_full_disk_errors_get_one_message(tmp_path):
    """/dev/full fails every write with ENOSPC; sqlite at its page limit says 'database or disk is full'."""
    with pytest.raises(OSError) as e:
        with open("/dev/full", "w") as f:
            f.write("x" * 10000)
    assert e.value.errno == errno.ENOSPC
    assert disk_full_message(e.value).startswith("the disk holding run.storage_path (or the MLflow store) is full (No space left on device)")
    con = sqlite3.connect(tmp_path / "x.db")
    con.execute("PRAGMA max_page_count=2")
    with pytest.raises(sqlite3.OperationalError) as e2:
        con.execute("CREATE TABLE t (v TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [("y" * 1000,)] * 100)
    try:  # as Ray reports a worker's failure: the text inside another exception
        raise RuntimeError("training failed") from e2.value
    except RuntimeError as wrapped:
        msg = disk_full_message(wrapped, str(tmp_path))
    assert msg.startswith(f"the disk holding {tmp_path} is full (database or disk is full). Free space there, then rerun")
    assert disk_full_message(ValueError("bad value")) is None


def test_half_built_store_is_refused_with_the_fix(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE evaluation_datasets (dataset_uuid TEXT)")
    con.commit()
    con.close()
    assert "MLflow table(s) missing" in incomplete_store(db)
    with pytest.raises(StoreError, match=rf"store {db} is incomplete: .*\(mv {db} {db}.broken\) and rerun"):
        prepare_sqlite_store(db)
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)  # truncated header
    assert incomplete_store(db) is not None
    assert db.exists()  # never deleted: it may hold runs


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory):
    """The tiny dataset with NaN, +inf and 1e300 in train x1, and unseen categories in val c0."""
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_data import write_tiny_dataset

    root = tmp_path_factory.mktemp("hostile")
    spec = write_tiny_dataset(root, rows=300)
    f = root / "train/part-0.parquet"
    t = pq.read_table(f)
    x1 = [float("nan"), float("inf"), 1e300, -1e300] + [0.5] * (t.num_rows - 4)
    pq.write_table(t.set_column(t.schema.get_field_index("x1"), "x1", pa.array(x1, pa.float64())), f)
    v = root / "val/part-0.parquet"
    t = pq.read_table(v)
    c0 = ["zz", "yy", None] + t.column("c0").to_pylist()[3:]
    pq.write_table(t.set_column(t.schema.get_field_index("c0"), "c0", pa.array(c0, pa.string())), v)
    return spec


def test_nonfinite_and_unseen_are_counted_per_column_and_split(hostile_data):
    cfg = load_config(TINY, [f"dataset={hostile_data}"])
    state = fit_preprocessing(cfg.dataset)
    rep = feature_report(cfg.dataset, state, ("train", "val"))
    assert rep.nonfinite["train"]["x1"] == 4 and rep.nonfinite["val"]["x1"] == 0 and rep.nonfinite["train"]["x0"] == 0
    assert rep.unseen["val"]["c0"] == 2 and rep.unseen["train"]["c0"] == 0  # the null is not 'unseen'
    assert rep.params() == {"data.nonfinite.train.x1": 4, "data.unseen.val.c0": 2}
    assert rep.lines() == ["non-finite feature values (replaced by 0) in train: x1=4",
                           "categories unseen in train (mapped to index 0) in val: c0=2"]
    strict = load_config(TINY, [f"dataset={hostile_data}", "dataset.nonfinite=error"])
    with pytest.raises(DataError, match=r"splits.train: column 'x1' has 4 non-finite value\(s\)"):
        feature_report(strict.dataset, state, ("train", "val"))
    # The train split counted inside fit_preprocessing's one scan equals a separate pass; with a
    # max_vocab that drops categories, the dropped values count as unseen in train too.
    for overrides in ([], ["dataset.groups.cat.max_vocab=2"]):
        spec = load_config(TINY, [f"dataset={hostile_data}", *overrides]).dataset
        one_scan = FeatureReport()
        st = fit_preprocessing(spec, report=one_scan)
        assert set(one_scan.nonfinite) == {"train"}
        feature_report(spec, st, ("train", "val"), one_scan)
        separate = feature_report(spec, st, ("train", "val"))
        assert one_scan.nonfinite == separate.nonfinite and one_scan.unseen == separate.unseen
    assert separate.unseen["train"]["c0"] > 0 and st.vocab["cat"][0] != state.vocab["cat"][0]


def test_extreme_values_train_finite(hostile_data, one_thread):
    """1e300 (beyond float32) is left out of the scaler's statistics and packed as 0: finite
    statistics, finite inputs, a finite loss and gradients."""
    from ple_adatt.data.preprocess import input_shapes
    from ple_adatt.launch.inference import to_tensors
    from ple_adatt.train.build import build_model, build_weighting
    from ple_adatt.train.step import Trainer
    from ple_adatt.train.trainable import phase_optimizer

    cfg = load_config(TINY, [f"dataset={hostile_data}"])
    state = fit_preprocessing(cfg.dataset)
    assert np.isfinite(state.mean["num"]).all() and np.isfinite(state.std["num"]).all()
    assert abs(state.mean["num"][1]) < 1 and state.std["num"][1] < 2  # 1e300 did not enter the statistics
    table = pq.read_table(Path(hostile_data).parent / "train/part-0.parquet")
    batch = Packer(cfg.dataset, state, cfg.task_names())(table.slice(0, 64))
    assert np.isfinite(batch["feat/num"]).all() and (batch["feat/num"][:4, 1] == 0).all()
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    weighting = build_weighting(cfg)
    opt, sched = phase_optimizer(cfg, model, weighting, None, 1, 4)
    out = Trainer(cfg, model, model, weighting, None, opt, sched, world=1).step(to_tensors(batch), 0)
    assert out.finite and all(torch.isfinite(p).all() for p in model.parameters())


def test_prediction_staging_never_touches_a_users_sibling_folder(tmp_path):
    from ple_adatt.launch.inference import duplicate_ids, staging_dir

    mine = tmp_path / "preds.tmp"
    mine.mkdir()
    (mine / "keep.txt").write_text("not the platform's")
    a, b = staging_dir(str(tmp_path / "preds")), staging_dir(str(tmp_path / "preds"))
    assert a != b and Path(a).parent == tmp_path and Path(a).name.startswith(".preds.partial-")
    assert (mine / "keep.txt").exists()
    shutil.rmtree(a), shutil.rmtree(b)
    out = tmp_path / "preds"
    out.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 2, 3, 3, 3], "p": [0.1] * 6}), out / "part.parquet")
    assert duplicate_ids(str(out)) == 5  # rows whose id is shared (2, 2, 3, 3, 3): all kept


def test_filter_values_are_quoted():
    assert quoted("plain-run.1") == "'plain-run.1'"
    assert quoted("it's") == '"it\'s"'
    with pytest.raises(ValueError, match="both quote characters"):
        quoted("a'b\"c")


def test_checkpoint_metric_names_cover_what_evaluation_reports():
    """The names train.checkpoint_metric is checked against include every key the loop reports
    for validation (evaluate_predictions + validation_loss), so a valid metric is never refused."""
    from ple_adatt.train.metrics import check_checkpoint_metric, evaluate_predictions, reported_metric_names

    cfg = load_config(TINY)
    rng = np.random.default_rng(0)
    n = 64
    preds = {"click": {"logits": rng.normal(size=n), "label": rng.integers(0, 2, n).astype(float),
                       "mask": np.ones(n, bool), "oracle": rng.random(n)},
             "stage": {"logits": rng.normal(size=(n, 3)), "label": rng.integers(0, 3, n), "mask": np.ones(n, bool)},
             "value": {"logits": rng.normal(size=n), "label": rng.normal(size=n), "mask": np.ones(n, bool)}}
    types = {t: cfg.dataset.task(t).type for t in cfg.task_names()}
    reported = {f"val/{k}" for k in evaluate_predictions(types, preds)} | {"val/loss"} | {f"val/{t}/loss" for t in types}
    assert reported <= set(reported_metric_names(cfg))
    check_checkpoint_metric(load_config(TINY, ["train.checkpoint_metric=val/avg/binary/auc", "train.checkpoint_mode=max"]))
    with pytest.raises(ValueError, match="close matches: val/click/auc"):
        check_checkpoint_metric(load_config(TINY, ["train.checkpoint_metric=val/clik/auc"]))


def test_evaluation_reports_unseen_categories(hostile_data, tmp_path):
    """A checkpoint evaluated on a split with categories never seen in train: scored (index 0)
    and counted in the result."""
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    from hostile_cases import _checkpoint

    from ple_adatt.launch.inference import evaluate_checkpoint

    ck = _checkpoint(tmp_path / "epoch_0000", Path(hostile_data))
    res = evaluate_checkpoint(ck, "val")
    assert res["unseen"]["c0"] == 2 and res["notes"] == ["categories unseen in train (mapped to index 0) in val: c0=2"]
    assert np.isfinite(res["metrics"]["loss"])
