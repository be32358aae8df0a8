"""A multi-node run on one machine, as on a real cluster: a head plus two worker nodes
(ray.cluster_utils.Cluster, like Ray's own Train tests), data, checkpoints and MLflow artifacts on an
S3-compatible server (moto) and an MLflow tracking server with proxied artifacts. The run is elastic
(scaling.num_workers=[1, 2]) and loses a worker node mid-training: it shrinks to one worker and
finishes from its last checkpoint in the bucket (issue 14: elastic training; issue 15: a real cluster).

This module brings its own Ray cluster: it must not share the session-wide `ray_session` of
tests/conftest.py, so a Ray already running in this process is shut down first and the shared one
is started again afterwards if it was up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ple_adatt.config import storage as st
from ple_adatt.config.loading import load_config
from ple_adatt.launch.fit import fit
from ple_adatt.launch.inference import evaluate_checkpoint, predict_to_parquet
from ple_adatt.train.checkpoint import load_state
from conftest import RAY_RUNTIME_ENV, ray_test_env, start_local_ray
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


# After a node dies, Train's first restart still counts it (Ray Data's autoscaling coordinator
# refreshes its view every 20 s), waits for a worker that cannot start, times out and retries with
# the workers that fit: keep that wasted attempt short (the shared session uses 120 s).
START_TIMEOUT_S = "30"


@pytest.fixture(scope="module")
def cluster(s3):
    """Head (1 CPU: the driver side, Ray Data) + two 2-CPU worker nodes. With
    scaling.cpus_per_worker=2 the two train workers can only run on different worker nodes, and
    losing a node loses one worker. Every node inherits os.environ, so all of them reach the S3
    server through AWS_ENDPOINT_URL."""
    import ray
    from ray.cluster_utils import Cluster

    shared_was_up = ray.is_initialized()
    if shared_was_up:
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", START_TIMEOUT_S)
        ray_test_env()  # before the nodes start: their processes inherit it
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 1024**2})
        nodes = [c.add_node(num_cpus=2, object_store_memory=150 * 1024**2) for _ in range(2)]
        ray.init(address=c.address, runtime_env=RAY_RUNTIME_ENV)
        c.wait_for_nodes()
        yield c, nodes
        ray.shutdown()
        c.shutdown()
    if shared_was_up:
        start_local_ray()


def _train_worker_nodes() -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
    return {a.node_id for a in actors}


def test_two_nodes_s3_elastic_node_loss_mlflow_evaluate_predict(cluster, s3, mlflow_server, tiny_dataset,
                                                                tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    c, (node_a, node_b) = cluster
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory: it must stay empty
    st.upload_dir(tiny_dataset.parent, f"s3://{BUCKET}/data/tiny")
    storage = f"s3://{BUCKET}/runs"
    cfg = load_config(SMOKE, [
        f"dataset=s3://{BUCKET}/data/tiny/dataset.yaml", "train.epochs=3", "scaling.num_workers=[1, 2]",
        "scaling.cpus_per_worker=2", f"run.storage_path={storage}", "run.name=multinode",
        "run.max_failures=1", "run.controller_failure_limit=3", f"tracking.uri={mlflow_server}",
        "tracking.experiment=cluster-test",
        # stream from parquet: no cached blocks that the lost node would take along
        "train.cache_train=false", "train.cache_val=false"])

    # 1) two workers on two nodes read parquet from the bucket and checkpoint to it; once the first
    #    checkpoint is registered in the bucket, a worker node is lost
    snapshot = f"{storage}/multinode/checkpoint_manager_snapshot.json"
    removed_at: list[float] = []

    def remove_a_node_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed_at:
            try:
                registered = "epoch_0000" in st.read_text(snapshot)
            except (FileNotFoundError, OSError):
                registered = False
            if registered:
                c.remove_node(node_b)
                removed_at.append(time.monotonic())
            time.sleep(0.2)

    killer = threading.Thread(target=remove_a_node_after_the_first_checkpoint, daemon=True)
    killer.start()
    t0 = time.monotonic()
    res = fit(cfg, verbose=False)
    killer.join(timeout=5)
    assert removed_at, "the run finished before a node could be removed"
    print(f"\nnode removed {removed_at[0] - t0:.1f} s into the run; run took {time.monotonic() - t0:.1f} s")
    assert len(_train_worker_nodes() - {c.head_node.node_id}) == 2, "train workers did not spread over 2 nodes"

    # 2) the elastic run shrank and finished from its last checkpoint in the bucket
    assert res.checkpoint_path == f"{storage}/multinode/epoch_0002"
    history = [(h["epoch"], h["world_size"]) for h in load_state(res.checkpoint_path)["history"]]
    print(f"(epoch, world size): {history}")
    assert [e for e, _ in history] == [0, 1, 2]  # each epoch once: resumed from a checkpoint, none lost
    sizes = [w for _, w in history]
    assert sizes[0] == 2 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)  # the group shrank
    # A checkpoint written by 2 workers resumed on 1 (twice the steps per epoch): the per-step cosine
    # was repositioned and still ends exactly at the last step.
    assert res.metrics["world_size"] == 1 and res.metrics["lr"] == pytest.approx(0.0, abs=1e-12)
    client = MlflowClient(mlflow_server)
    steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, "val/loss")]
    assert sorted(steps) == [0, 1, 2], f"epochs were re-trained instead of resumed: {steps}"

    # 3) evaluate and predict straight from the bucket checkpoint; predictions go to the bucket
    ev = evaluate_checkpoint(res.checkpoint_path, "val")
    assert ev["metrics"]["loss"] == pytest.approx(res.metrics["val/loss"], abs=1e-5)  # scores val as training did
    out = predict_to_parquet(res.checkpoint_path, "test", f"s3://{BUCKET}/predictions/multinode")
    preds = st.list_files(str(out), ".parquet")
    assert preds and json.loads(st.read_text(f"{out}/_SOURCE.json"))["checkpoint"] == res.checkpoint_path

    # 4) MLflow: params, metrics and artifacts (proxied by the server into the bucket)
    run = client.get_run(res.mlflow_run_id)
    assert run.data.params["scaling.num_workers"] == "[1, 2]" and "val/click/auc" in run.data.metrics
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
