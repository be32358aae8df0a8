"""Elastic training: a run loses a worker node, shrinks from 2 workers to 1 and finishes from its last
checkpoint (a checkpoint written by 2 workers, resumed on 1).

A real multi-node Ray cluster on one machine (ray.cluster_utils.Cluster), not the shared local
`ray_session`: this module sorts before the other integration modules so that session is not up
yet; if it is (another order), it is shut down here and restarted afterwards.
"""
from __future__ import annotations

import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import RAY_RUNTIME_ENV, ray_test_env, start_local_ray
from ple_adatt.config.loading import load_config
from ple_adatt.launch.fit import fit
from ple_adatt.launch.inference import evaluate_checkpoint
from ple_adatt.train.checkpoint import load_state

pytestmark = pytest.mark.integration
SMOKE = "configs/smoke/tiny.yaml"
# A train worker takes 2 CPUs and the head has 1 (Ray Data, the Train controller): every worker
# node hosts exactly one train worker, none lands on the head, and losing a node loses one worker.
ONE_WORKER_PER_NODE = ["scaling.cpus_per_worker=2"]
# After a node dies, Train's first restart still counts it (Ray Data's autoscaling coordinator
# refreshes its view every 20 s), waits for a worker that cannot start, times out and retries with
# the workers that fit: keep that wasted attempt short (the shared session uses 120 s).
START_TIMEOUT_S = "30"


@pytest.fixture(scope="module")
def cluster():
    shared_was_up = ray.is_initialized()
    if shared_was_up:
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", START_TIMEOUT_S)
        ray_test_env()  # before the nodes start: their processes inherit it
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024**2})
        for _ in range(2):
            c.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
        c.wait_for_nodes()
        ray.init(address=c.address, runtime_env=RAY_RUNTIME_ENV)
        yield c
        ray.shutdown()
        c.shutdown()
    if shared_was_up:
        start_local_ray()


def _epochs_and_sizes(checkpoint_path: str) -> list[tuple[int, int]]:
    return [(h["epoch"], h["world_size"]) for h in load_state(checkpoint_path)["history"]]


def test_elastic_run_loses_a_worker_node_and_finishes(cluster, tiny_dataset, tmp_path):
    cfg = load_config(SMOKE, [f"dataset={tiny_dataset}", "train.epochs=3", "scaling.num_workers=[1, 2]",
                              *ONE_WORKER_PER_NODE, f"run.storage_path={tmp_path}", "run.name=elastic",
                              "run.max_failures=1", "run.controller_failure_limit=3", "tracking.enabled=false",
                              # stream from parquet: no cached blocks that the lost node would take along
                              "train.cache_train=false", "train.cache_val=false"])
    snapshot = tmp_path / "elastic" / "checkpoint_manager_snapshot.json"
    victim = next(iter(cluster.worker_nodes))
    removed_at: list[float] = []

    def remove_a_node_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed_at:
            if snapshot.exists() and "epoch_0000" in snapshot.read_text(errors="replace"):
                cluster.remove_node(victim)
                removed_at.append(time.monotonic())
            time.sleep(0.1)

    killer = threading.Thread(target=remove_a_node_after_the_first_checkpoint, daemon=True)
    killer.start()
    t0 = time.monotonic()
    res = fit(cfg, verbose=False)
    killer.join(timeout=5)
    assert removed_at, "the run finished before a node could be removed"
    print(f"node removed {removed_at[0] - t0:.1f} s into the run; run took {time.monotonic() - t0:.1f} s")

    history = _epochs_and_sizes(res.checkpoint_path)
    print(f"(epoch, world size): {history}")
    assert [e for e, _ in history] == [0, 1, 2]  # each epoch once: resumed from a checkpoint, none lost
    sizes = [w for _, w in history]
    assert sizes[0] == 2 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)  # the group shrank
    assert res.metrics["epoch"] == 2 and res.metrics["world_size"] == 1
    # A checkpoint written by 2 workers resumed on 1 (twice the steps per epoch): the per-step cosine
    # was repositioned and still ends exactly at the last step.
    assert res.metrics["lr"] == pytest.approx(0.0, abs=1e-12)
    # the final checkpoint loads outside Ray (its config holds the [min, max] pair) and scores val as training did
    report = evaluate_checkpoint(res.checkpoint_path, "val")
    assert report["metrics"]["loss"] == pytest.approx(res.metrics["val/loss"], abs=1e-5)
