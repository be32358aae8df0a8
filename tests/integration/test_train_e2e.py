"""End-to-end Ray Train runs on the shared local Ray session (few, tiny, but real)."""
from __future__ import annotations

import contextlib
import io
import math
import runpy
import sys

import pytest

from ple_adatt.config.loading import load_config
from ple_adatt.launch.fit import fit
from ple_adatt.train.checkpoint import load_state

pytestmark = pytest.mark.integration
SMOKE = "configs/smoke/tiny.yaml"
JOB_CONSOLE: list[str] = []  # what jobs/train.py printed in the `job_run` fixture


def _val(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("val/") and not math.isnan(v)}


def _assert_close(a: dict, b: dict, tol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, {k: (a[k], b[k]) for k in a if abs(a[k] - b[k]) > tol}
    return worst


@pytest.fixture(scope="module")
def job_run(ray_session, tiny_dataset, tmp_path_factory):
    """The real job entrypoint (jobs/train.py), 1 worker, 3 epochs, its console captured. Then a
    relaunch under the same name with one more epoch: it resumes after epoch 2, rank 0 fails once at
    the start of epoch 3, and Ray Train restarts the worker group from the epoch-2 checkpoint."""
    storage = tmp_path_factory.mktemp("runs")
    marker = storage / "failed.marker"
    argv = ["jobs/train.py", "--config", SMOKE, f"dataset={tiny_dataset}", "train.epochs=3",
            f"run.storage_path={storage}", "run.name=a"]
    old = sys.argv
    sys.argv = argv
    out = io.StringIO()  # the job's console, worker lines included (Ray's log monitor writes to sys.stdout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path("jobs/train.py", run_name="__main__")
    finally:
        sys.argv = old
        JOB_CONSOLE.append(out.getvalue())
        print(out.getvalue())
    cfg = load_config(SMOKE, argv[3:] + ["train.epochs=4", f"train.fault_injection={{epochs: [3], rank: 0, marker: '{marker}'}}"])
    res = fit(cfg, verbose=False)
    assert (storage / "failed.marker.e3").exists(), "the injected failure never fired"
    return res


def test_job_console_relaunch_and_worker_failure(job_run):
    res = job_run
    assert res.metrics["epoch"] == 3
    state = load_state(res.checkpoint_path)
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2, 3]  # epochs 0-2 came from checkpoints, not re-run
    assert "val/click/auc" in res.metrics and "val/avg/binary/auc" in res.metrics
    assert res.best_checkpoint_path is not None and res.mlflow_run_id
    # One MLflow run, one value per epoch: the relaunch and the restart resumed the run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(res.tracking_uri)
    steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, "val/loss")]
    assert sorted(steps) == [0, 1, 2, 3], steps
    # Issue 19: one line per epoch, nothing twice, no Ray internals, <= 40 lines (tests/console_check.py).
    from console_check import console_problems

    console = JOB_CONSOLE[0]
    print(f"job console: {len([ln for ln in console.splitlines() if ln.strip()])} non-blank lines")
    assert console_problems(console) == [], console
    assert sum("[ple-adatt] epoch " in ln and "/3 |" in ln for ln in console.splitlines()) <= 3
    # The job logged the best checkpoint as an MLflow model (its reload is tests/unit/test_model_export.py).
    assert "model:" in console and client.search_logged_models(
        experiment_ids=[client.get_run(res.mlflow_run_id).info.experiment_id])


# 2 workers; adaTT warmup e0, dynamic e1-e2, frozen e3-e4; phase 2 e5-e6. Kills at the start of e2, e4
# and e6 restart inside the dynamic, the frozen and the phase-2 phase from a checkpoint of that phase.
# Uncertainty weighting: learnable weights synced across ranks. The seed's PLE has buffers (DDP broadcasts
# them in forward) and 200 validation rows are one batch: rank 1 scores none, and must not hang.
HETERO = ["model.arch=ple_hetero", "model.experts.use=[mlp]", "adatt.enabled=true", "adatt.grad_interval=1",
          "loss_weighting.name=uncertainty",
          "adatt.warmup_fraction=0.2", "adatt.freeze_fraction=0.6", "train.epochs=5",
          "two_phase.enabled=true", "two_phase.phase2_epochs=2", "tracking.enabled=false",
          "scaling.num_workers=2", "scaling.cpus_per_worker=1",
          "model.logit_transfer.enabled=true", "model.logit_transfer.edges=[{source: click, target: value}]"]


def test_adatt_two_phase_resume_is_exact(ray_session, tiny_dataset, tmp_path):
    """Two workers, killed inside adaTT's dynamic and frozen phases and inside phase 2: the resumed
    run must reproduce the uninterrupted one. The uninterrupted run packs the train split once into the
    object store; the killed run streams it from parquet every epoch (train.cache_train=false), so the
    equality also shows that streaming_split hands each rank the same rows in the same order."""
    common = [f"dataset={tiny_dataset}", f"run.storage_path={tmp_path}", *HETERO]
    clean = fit(load_config(SMOKE, common + ["run.name=u"]), verbose=False)
    marker = tmp_path / "kill"
    killed = fit(load_config(SMOKE, common + ["run.name=r", "run.max_failures=3", "train.cache_train=false",
                                              f"train.fault_injection={{epochs: [2, 4, 6], marker: '{marker}'}}"]),
                 verbose=False)
    assert all((tmp_path / f"kill.e{e}").exists() for e in (2, 4, 6))
    state = load_state(killed.checkpoint_path)
    assert state["extra"]["phase"] == 2 and [h["phase"] for h in state["history"]] == [1] * 5 + [2] * 2
    assert [h["adatt/phase"] for h in state["history"][:5]] == [0, 1, 1, 2, 2]  # warmup, dynamic x2, frozen x2
    assert state["extra"]["adatt"]["phase_id"].item() == 3  # OFF in phase 2 (see adatt.schedule.Phase)
    worst = _assert_close(_val(killed.metrics), _val(clean.metrics), tol=1e-6)
    assert killed.metrics["weight/click"] != 1.0  # uncertainty weights moved, identically in both runs
    print(f"2-worker resume, max |val metric difference| vs uninterrupted: {worst:.2e}")
