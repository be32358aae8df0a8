"""Tune campaign (ASHA + interrupt/resume + best config) and a 2x2 ablation study, end to end.

Few, tiny runs on the shared local Ray session (max_concurrent_trials=1 keeps ASHA deterministic).
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
        "overrides": ["train.epochs=3", "train.cache_train=true", "train.batch_size=64"],
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


def test_campaign_asha_interrupt_resume_best_config(ray_session, tiny_dataset, tmp_path):
    import optuna
    import ray.tune
    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.fit import fit
    from ple_adatt.launch.tune import prepare_campaign, run_campaign

    finished_first: list[str] = []

    class InterruptAfterFirstTrial(ray.tune.Callback):
        """Simulates Ctrl+C / a killed driver once one trial has finished (Tune saves its state)."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            finished_first.append(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)

    overrides = [f"dataset={tiny_dataset}", f"run.storage_path={tmp_path / 'runs'}"]
    campaign = prepare_campaign(_campaign_yaml(tmp_path), overrides)
    first = run_campaign(campaign, tune_callbacks=[InterruptAfterFirstTrial()], verbose=0)
    assert first.interrupted and len(finished_first) >= 1

    out = run_campaign(prepare_campaign(_campaign_yaml(tmp_path), overrides), verbose=0)  # same name: resume
    assert not out.interrupted
    df = out.trials
    assert len(df) == 3 and df["trial_id"].is_unique, df
    assert set(finished_first) <= set(df["trial_id"])
    # A trial finished before the interruption was not re-run: its Tune results hold one row per epoch.
    tdir = next(p for p in Path(out.experiment_path).iterdir() if finished_first[0] in p.name)
    assert len((tdir / "result.json").read_text().splitlines()) == 3
    assert (df["status"] == "early_stopped").sum() >= 1, df[["trial_id", "status", "epochs", "val/loss"]]
    assert (df["status"] == "completed").sum() >= 1

    summary = Path(out.summary_dir)
    for f in ("summary.md", "trials.csv", "importances.csv", "optimization_history.png",
              "parallel_coordinate.png", "best_config.yaml"):
        assert (summary / f).is_file(), f
    study = optuna.load_study(study_name="itest-asha", storage=f"sqlite:///{summary / 'optuna.db'}")
    assert len(study.trials) == 3
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) >= 1

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke-tiny")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert sorted(r.data.tags["tune.status"] for r in children) == sorted(df["status"])
    assert client.get_run(out.parent_run_id).info.status == "FINISHED"

    best = load_config(out.best_config_path, ["train.epochs=1", f"run.storage_path={tmp_path / 'best'}",
                                              "tracking.enabled=false"])
    best_row = df.iloc[0]
    assert best.train.lr == pytest.approx(best_row["param:train.lr"])
    res = fit(best, verbose=False)
    assert "val/loss" in res.metrics
