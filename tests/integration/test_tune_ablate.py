"""Tune campaign (ASHA + interrupt/resume + best config) and a 2x2 ablation study, end to end.

Few, tiny runs on the shared local Ray session (the campaign runs one trial at a time: ASHA stays
deterministic; the study runs two at a time).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ple_adatt.config.loading import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _campaign_yaml(tmp: Path) -> Path:
    doc = {
        "name": "itest-asha",
        "base": str(ROOT / "configs/smoke/tiny.yaml"),
        "overrides": ["train.epochs=2", "train.cache_train=true", "train.batch_size=64", "scaling.cpus_per_worker=0.5"],
        # The base lr (3e-3) is the top of the range and is enqueued first; TPE's random start-up
        # samples are far lower, so they trail the first trial after epoch 1 and ASHA stops them.
        "search_space": {
            "train.lr": {"type": "float", "low": 1.0e-6, "high": 3.0e-3, "log": True},
            "model.arch": {"type": "categorical", "choices": ["ple", "mmoe"]},
            "model.num_levels": {"type": "int", "low": 1, "high": 2, "when": {"model.arch": "ple"}},
        },
        "budget": {"num_trials": 3, "max_concurrent": 1},
        "objective": {"metric": "val/loss"},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "sampler": {"name": "tpe", "seed": 0},
    }
    path = tmp / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_study_two_variants_two_seeds_report_and_regeneration(ray_session, tiny_dataset, tmp_path):
    import runpy
    import sys

    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.ablate import prepare_study, run_study

    doc = {"name": "itest-study", "base": str(ROOT / "configs/smoke/tiny.yaml"),
           "overrides": ["train.epochs=1", "train.cache_train=true", "train.batch_size=64",
                         "scaling.cpus_per_worker=0.5"],
           "variants": {"ple": [], "mmoe": ["model.arch=mmoe"]}, "baseline": "ple", "seeds": [0, 1]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    # Two runs at once (what the shared 4-CPU Ray fits): a tiny run is mostly start-up latency.
    overrides = [f"dataset={tiny_dataset}", f"run.storage_path={tmp_path / 'runs'}", "max_concurrent=2"]
    out = run_study(prepare_study(path, overrides), verbose=0)
    assert not out.interrupted
    # The finished study's design is recorded; asking it for more seeds is refused before Ray does anything.
    from ple_adatt.config.loading import ConfigError

    with pytest.raises(ConfigError, match=r"seeds: \[0, 1\] -> \[0, 1, 2\]"):
        run_study(prepare_study(path, overrides + ["seeds=[0,1,2]"]), verbose=0)
    report = tmp_path / "runs" / "itest-study" / "report"
    md = (report / "report.md").read_text()
    for section in ("Headline", "Summary", "Verdict", "Per-task results", "Paired differences vs baseline",
                    "Per-type averages", "Oracle gaps", "Plots", "Method"):
        assert f"## {section}" in md, section
    for f in ("report.html", "summary.csv", "comparisons.csv", "results.csv", "seeds_binary.png", "forest.png"):
        assert (report / f).is_file(), f
    df = out.results
    assert set(df["variant"]) == {"ple", "mmoe"} and set(df["seed"]) == {0, 1}
    assert set(df["task"]) == {"click", "stage", "value"}

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= arts

    # Regenerate from MLflow only, through the job's CLI, into another folder: same table.
    old = sys.argv
    sys.argv = ["jobs/report.py", "--study", "itest-study", "--tracking-uri",
                f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "--out", str(tmp_path / "regen")]
    try:
        runpy.run_path(str(ROOT / "jobs/report.py"), run_name="__main__")
    finally:
        sys.argv = old
    regen = pd.read_csv(tmp_path / "regen" / "results.csv")
    orig = pd.read_csv(report / "results.csv")
    pd.testing.assert_frame_equal(regen, orig)
    assert "## Verdict" in (tmp_path / "regen" / "report.md").read_text()


def test_campaign_asha_interrupt_resume_best_config(ray_session, tiny_dataset, tmp_path):
    import optuna
    import ray.tune
    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.tune import prepare_campaign, run_campaign

    marker = tmp_path / "interrupted-after"

    class InterruptAfterFirstTrial(ray.tune.Callback):
        """Simulates Ctrl+C once one trial has finished (Tune saves its state). Tune pickles its
        callbacks with the experiment, so the restored copy must not fire again: a marker file."""

        def __init__(self):
            self.done: list[str] = []

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done.append(trial.trial_id)
            # After 2 trials: ASHA's rung history lives in the driver and is not part of the saved
            # experiment, so the stop decision must happen before the interruption.
            if len(self.done) == 2 and not marker.exists():
                marker.write_text("\n".join(self.done))
                os.kill(os.getpid(), signal.SIGUSR1)

    overrides = [f"dataset={tiny_dataset}", f"run.storage_path={tmp_path / 'runs'}"]
    campaign = prepare_campaign(_campaign_yaml(tmp_path), overrides)
    first = run_campaign(campaign, tune_callbacks=[InterruptAfterFirstTrial()], verbose=0)
    assert first.interrupted and marker.exists()
    finished_first = marker.read_text().split("\n")

    out = run_campaign(prepare_campaign(_campaign_yaml(tmp_path), overrides), verbose=0)  # same name: resume
    assert not out.interrupted
    df = out.trials
    assert len(df) == 3 and df["trial_id"].is_unique, df
    assert set(finished_first) <= set(df["trial_id"])
    # Trials finished before the interruption were not re-run: one Tune result row per epoch trained.
    for tid in finished_first:
        tdir = next(p for p in Path(out.experiment_path).iterdir() if tid in p.name)
        epochs = int(df.loc[df["trial_id"] == tid, "epochs"].item())
        assert len((tdir / "result.json").read_text().splitlines()) == epochs
    assert (df["status"] == "early_stopped").sum() >= 1, df[["trial_id", "status", "epochs", "val/loss"]]
    assert (df["status"] == "completed").sum() >= 1

    summary = Path(out.summary_dir)
    for f in ("summary.md", "trials.csv", "importances.csv", "optimization_history.png",
              "parallel_coordinate.png", "best_config.yaml"):
        assert (summary / f).is_file(), f
    study = optuna.load_study(study_name="itest-asha", storage=f"sqlite:///{summary / 'optuna.db'}")
    assert len(study.trials) == 3
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) >= 1
    states = {"completed": optuna.trial.TrialState.COMPLETE, "early_stopped": optuna.trial.TrialState.PRUNED}
    assert sorted(str(t.state) for t in study.trials) == sorted(str(states[s]) for s in df["status"])

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("itest-asha")  # the campaign's own experiment (issue 19)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert sorted(r.data.tags["tune.status"] for r in children) == sorted(df["status"])
    assert client.get_run(out.parent_run_id).info.status == "FINISHED"
    # Every child run ended, with the status of what happened (issue 18 item 5, issue 19): ASHA-stopped
    # -> KILLED, run to max_t -> FINISHED; status and epochs in trials.csv match the epochs the run logged.
    print("child runs:", [(r.data.tags["ple_adatt.trial_id"], r.info.status, r.data.tags["tune.status"])
                          for r in children])
    assert len(children) == 3
    for r in children:
        row = df.loc[df["trial_id"] == r.data.tags["ple_adatt.trial_id"]].iloc[0]
        assert r.info.status == {"completed": "FINISHED", "early_stopped": "KILLED"}[row["status"]], row
        steps = sorted({m.step for m in client.get_metric_history(r.info.run_id, "val/loss")})
        n = int(row["epochs"])
        # a stopped trial's worker may log one more epoch while Tune kills it; never fewer than reported
        assert steps[:n] == list(range(n)) and len(steps) <= n + (row["status"] == "early_stopped"), (row, steps)
        assert row["status"] == ("completed" if row["epochs"] >= 2 else "early_stopped")  # max_t = train.epochs
        assert "final_metrics.json" in {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "epoch" not in r.data.metrics and "phase" not in r.data.metrics

    # The best config is a complete experiment: it validates and carries the best trial's values.
    best = load_config(out.best_config_path, [f"run.storage_path={tmp_path / 'best'}"])
    best_row = df.iloc[0]
    assert best.train.lr == pytest.approx(best_row["param:train.lr"])
    assert best.model.arch == best_row["param:model.arch"]
