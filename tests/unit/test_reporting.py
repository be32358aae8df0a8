"""Where per-epoch metrics go (Ray report / MLflow / tables), the console lines, run closing and
lineage helpers: no Ray."""
from __future__ import annotations

import pandas as pd

from console_check import console_problems
from ple_adatt.report.tune_summary import trial_epochs, trial_status
from ple_adatt.train.diagnostics import diagnostics_table
from ple_adatt.train.reporting import EpochProgress, for_mlflow, for_report

EPOCH = {"epoch": 2, "phase": 1, "world_size": 1, "lr": 1e-3, "train/loss": 1.0, "train/click/loss": 0.5,
         "val/loss": 0.9, "val/click/auc": 0.7, "val/avg/binary/auc": 0.7, "weight/click": 1.0,
         "loss_terms/x": 0.1, "gate/shared/click/mlp": 0.6, "gate/shared/click/entropy_ratio": 0.9,
         "gate/shared/entropy_ratio_mean": 0.9, "gate/shared/entropy_ratio_min": 0.9,
         "adatt/phase": 1, "adatt/transfer_entropy": 0.5}


def test_report_is_compact_and_mlflow_gets_no_step_phase_or_gate_table():
    assert set(for_report(EPOCH)) == {"epoch", "lr", "world_size", "train/loss", "val/loss", "val/click/auc", "val/avg/binary/auc",
                                      "weight/click"}
    logged = for_mlflow(EPOCH)
    assert not {"epoch", "phase", "adatt/phase", "gate/shared/click/mlp", "gate/shared/click/entropy_ratio"} & set(logged)
    assert {"gate/shared/entropy_ratio_mean", "gate/shared/entropy_ratio_min", "adatt/transfer_entropy",
            "val/click/auc", "train/click/loss"} <= set(logged)


def test_gate_and_adatt_values_become_one_long_table():
    rows = diagnostics_table([EPOCH, {**EPOCH, "epoch": 3, "gate/shared/click/mlp": 0.4}])
    df = pd.DataFrame(rows)
    w = df[df["key"] == "gate_weight"]
    assert list(w["value"]) == [0.6, 0.4] and set(w["expert"]) == {"mlp"} and list(w["epoch"]) == [2, 3]
    assert set(df["key"]) == {"gate_weight", "entropy_ratio", "adatt/phase", "adatt/transfer_entropy"}


def test_in_epoch_progress_is_throttled_by_time():
    now = [0.0]
    p = EpochProgress(epoch=0, total_epochs=2, rows_per_rank=1000, world=2, every_s=30, clock=lambda: now[0],
                      print_fn=None)
    now[0] = 10
    assert p.update(100) is None  # too soon
    now[0] = 40
    line = p.update(400)
    assert "epoch 1/2" in line and "40%" in line and "(800/2,000 rows)" in line and "20 samples/s" in line
    assert "epoch eta 0:01:00" in line  # 600 rows left at 10 rows/s per rank
    now[0] = 50
    assert p.update(500) is None  # 10 s after the last line


def test_trial_epochs_come_from_the_result_history_not_restored_counters():
    # A trial restored after a kill: its Train run resumed after epoch 2, Tune counts 1 iteration.
    restored = {"epoch": 2, "training_iteration": 1}
    assert trial_epochs(restored, pd.DataFrame({"epoch": [0, 1, 2], "training_iteration": [1, 2, 1]})) == 3
    assert trial_status(False, trial_epochs(restored), max_t=3) == "completed"
    assert trial_status(False, 1, max_t=3) == "early_stopped"
    assert trial_status(True, 3, max_t=3) == "error"
    assert trial_status(False, 1, max_t=None) == "completed"  # studies: no scheduler
    assert trial_epochs({"training_iteration": 2}) == 2  # no epoch reported: Tune's counter


def test_console_check_flags_duplicates_ray_internals_and_length():
    good = "\n".join(["[ple-adatt] MLflow run x", "(RayTrainWorker pid=1) [ple-adatt] epoch 1/2 | a",
                      "(RayTrainWorker pid=1) [ple-adatt] epoch 2/2 | b"])
    assert console_problems(good) == []
    twice = good + "\n(RayTrainWorker pid=1) [ple-adatt] epoch 2/2 | b"
    assert console_problems(twice) == ["printed twice: [ple-adatt] epoch 2/2 | b"]
    assert console_problems("(SplitCoordinator pid=2) Progress bars disabled. To enable ...")
    assert console_problems("\n".join(f"line {i}" for i in range(41))) == ["41 lines > 40"]


def test_run_closer_ends_each_trial_run_with_its_outcome(tmp_path):
    """The Tune callback on a real sqlite store: ASHA-stopped -> KILLED with final metrics, errored ->
    FAILED, a run fit() already finished keeps its status."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.run_closer import RunCloser
    from ple_adatt.launch.trial import trial_run_name
    from ple_adatt.tracking import mlflow_tracking as mt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {t: mt.start_run(uri, "camp", trial_run_name("camp", t), {})[0] for t in ("a", "b", "c")}
    MlflowClient(uri).set_terminated(ids["c"], "FINISHED")
    closer = RunCloser(uri, "camp", "camp", max_t=3)
    closer.on_trial_complete(1, [], SimpleNamespace(trial_id="a", last_result={"epoch": 0, "val/loss": 0.5}))
    closer.on_trial_error(1, [], SimpleNamespace(trial_id="b", last_result={"epoch": 1}))
    closer.on_trial_complete(1, [], SimpleNamespace(trial_id="c", last_result={"epoch": 2}))
    client = MlflowClient(uri)
    runs = {t: client.get_run(i) for t, i in ids.items()}
    assert {t: r.info.status for t, r in runs.items()} == {"a": "KILLED", "b": "FAILED", "c": "FINISHED"}
    assert {t: r.data.tags["tune.status"] for t, r in runs.items()} == {"a": "early_stopped", "b": "error",
                                                                        "c": "completed"}
    assert "final_metrics.json" in {a.path for a in client.list_artifacts(ids["a"])}
