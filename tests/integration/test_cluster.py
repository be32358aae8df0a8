"""A multi-node run on one machine, as on a real cluster: a head plus two worker nodes
(ray.cluster_utils.Cluster, like Ray's own Train tests), data, checkpoints and MLflow artifacts on an
S3-compatible server (moto) and an MLflow tracking server with proxied artifacts.

This module brings its own Ray cluster: it must not share the session-wide `ray_session` of
tests/conftest.py, so a Ray already running in this process is shut down first (later modules
start theirs again through `ray_session`/`ensure_ray`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ple_adatt.config import storage as st
from ple_adatt.config.loading import load_config
from ple_adatt.launch.fit import fit
from ple_adatt.launch.inference import evaluate_checkpoint, predict_to_parquet
from ple_adatt.train.checkpoint import load_state
from s3_server import free_port, s3_server

pytestmark = pytest.mark.integration
SMOKE = Path(__file__).resolve().parents[2] / "configs/smoke/tiny.yaml"
BUCKET = "ple-adatt"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as env:
        yield env


@pytest.fixture(scope="module")
def mlflow_server(s3, tmp_path_factory):
    """`mlflow server` as on the cluster's head: sqlite backend, artifacts proxied to the bucket."""
    port = free_port()
    home = tmp_path_factory.mktemp("mlflow")
    env = {**os.environ, **s3, "MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{home}/mlflow.db",
         "--artifacts-destination", f"s3://{BUCKET}/mlflow"],
        env=env, cwd=home, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(s3):
    """Head (1 CPU: the driver side, Ray Data) + two 2-CPU worker nodes. With
    scaling.cpus_per_worker=2 the two train workers can only run on different worker nodes.
    Every node inherits os.environ, so all of them reach the S3 server through AWS_ENDPOINT_URL."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 1024**2})
    nodes = [c.add_node(num_cpus=2, object_store_memory=150 * 1024**2) for _ in range(2)]
    ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _train_worker_nodes() -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
    return {a.node_id for a in actors}


def test_two_nodes_s3_checkpoints_node_loss_resume_and_mlflow(cluster, s3, mlflow_server, tiny_dataset,
                                                              tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    c, (node_a, node_b) = cluster
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory: it must stay empty
    st.upload_dir(tiny_dataset.parent, f"s3://{BUCKET}/data/tiny")
    storage = f"s3://{BUCKET}/runs"
    args = [f"dataset=s3://{BUCKET}/data/tiny/dataset.yaml", "scaling.num_workers=2", "scaling.cpus_per_worker=2",
            f"run.storage_path={storage}", "run.name=multinode", f"tracking.uri={mlflow_server}",
            "tracking.experiment=cluster-test"]

    # 1) two workers on two nodes, reading parquet from the bucket, checkpointing to it
    first = fit(load_config(SMOKE, args + ["train.epochs=2"]), verbose=False)
    assert first.checkpoint_path == f"{storage}/multinode/epoch_0001"
    assert len(_train_worker_nodes() - {c.head_node.node_id}) == 2, "train workers did not spread over 2 nodes"

    # 2) lose a worker node; a replacement joins (the autoscaler's job on a real cluster)
    c.remove_node(node_b)
    c.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
    c.wait_for_nodes()

    # 3) relaunch the same run with one more epoch: it resumes from the bucket and trains only epoch 2
    res = fit(load_config(SMOKE, args + ["train.epochs=3"]), verbose=False)
    assert res.checkpoint_path == f"{storage}/multinode/epoch_0002" and res.mlflow_run_id == first.mlflow_run_id
    assert [h["epoch"] for h in load_state(res.checkpoint_path)["history"]] == [0, 1, 2]
    client = MlflowClient(mlflow_server)
    steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, "val/loss")]
    assert sorted(steps) == [0, 1, 2], f"epochs were re-trained instead of resumed: {steps}"

    # 4) evaluate and predict straight from the bucket checkpoint; predictions go to the bucket
    ev = evaluate_checkpoint(res.checkpoint_path, "test")
    assert ev["metrics"]["click/auc"] > 0.5, ev
    out = predict_to_parquet(res.checkpoint_path, "test", f"s3://{BUCKET}/predictions/multinode")
    preds = st.list_files(str(out), ".parquet")
    assert preds and json.loads(st.read_text(f"{out}/_SOURCE.json"))["checkpoint"] == res.checkpoint_path

    # 5) MLflow: params, metrics and artifacts (proxied by the server into the bucket)
    run = client.get_run(res.mlflow_run_id)
    assert run.data.params["scaling.num_workers"] == "2" and "val/click/auc" in run.data.metrics
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {"resolved_config.yaml", "final_metrics.json", "best_checkpoint.json"} <= artifacts
    in_bucket = st.list_files(f"s3://{BUCKET}/mlflow")
    assert any(f.endswith("/artifacts/final_metrics.json") for f in in_bucket), in_bucket

    assert list(tmp_path.iterdir()) == [], "the run wrote to the head's local disk"
    listing = st.list_files(f"s3://{BUCKET}")
    print(f"bucket s3://{BUCKET} after the run ({len(listing)} objects):\n  " + "\n  ".join(listing))
    kept = sorted({f.split("/")[-2] for f in listing if f.startswith(f"{storage}/multinode/epoch_")})
    assert kept == ["epoch_0001", "epoch_0002"], kept  # run.checkpoints_to_keep=2 pruned epoch_0000 in the bucket
