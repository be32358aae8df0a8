"""The Tune trial driver shared by tuning campaigns and ablation studies.

Each Tune trial is a plain function (Train V2 pattern): it turns the trial's Tune config into
experiment overrides, re-validates the experiment, and calls `fit` with a `TuneReportCallback`
in the Train RunConfig, so the trial is itself a (data-parallel) Ray Train run. The Train run
name is derived from the trial id, so a restored trial resumes its own Train run and MLflow run.

Tune config -> overrides:
  campaign trial  {"train.lr": 0.003, "model.arch": "ple", ...}   (dotted paths, Optuna values)
  ablation trial  {"variant": "no_adatt", "seed": 3[, "level": 0.5]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ple_adatt.config.loading import ConfigError, apply_overrides, flatten, validate
from ple_adatt.config.paths import apply_values, set_path
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.tracking.queries import TASK_TYPES_TAG

ENCODED = "json:"
"""Prefix of categorical choices that are not Optuna scalars (lists, mappings): json-encoded."""
KIND_TAG, NAME_TAG, TRIAL_TAG = "ple_adatt.kind", "ple_adatt.parent_name", "ple_adatt.trial_id"


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides its Tune config (shipped once via tune.with_parameters)."""

    name: str
    """Campaign or study name (prefix of every Train run name)."""
    base: dict
    """Base experiment as a plain dict (campaign/study overrides already applied)."""
    train_storage: str
    """run.storage_path of every trial's Train run."""
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    variants: dict[str, list[str]] | None = None
    levels: dict[float, list[str]] | None = None
    level_name: str = "correlation"
    extra_tags: dict[str, str] = field(default_factory=dict)


def trial_run_name(name: str, trial_id: str) -> str:
    """Deterministic Train/MLflow run name of a trial: restoring the trial resumes this run."""
    return f"{name}-{trial_id}"


def encode_choice(value: Any) -> Any:
    """Optuna categoricals hold None/bool/int/float/str; anything else travels as a json string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ENCODED + json.dumps(value, sort_keys=True)


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(ENCODED):
        return json.loads(value[len(ENCODED):])
    return value


# ----------------------------------------------------------------------------- trial config

def trial_values(spec: TrialSpec, config: dict) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Tune config -> (dotted values, string overrides, MLflow tags)."""
    if spec.variants is None:  # campaign: every key is a dotted config path
        values = {k: decode_choice(v) for k, v in config.items()}
        return values, [], {KIND_TAG: "tune_trial"}
    variant, seed = config["variant"], int(config["seed"])
    overrides: list[str] = []
    tags = {KIND_TAG: "ablation_run", "variant": variant, "seed": str(seed)}
    if spec.levels is not None:
        level = float(config["level"])
        overrides += spec.levels[level]
        tags[spec.level_name] = repr(level)
    overrides += spec.variants[variant]
    return {"train.seed": seed}, overrides, tags


def build_trial_config(spec: TrialSpec, config: dict) -> tuple[ExperimentConfig, dict[str, str]]:
    """The trial's validated experiment (storage and tracking pointed at the campaign's)."""
    values, overrides, tags = trial_values(spec, config)
    problems: list[str] = []
    data = apply_values(apply_overrides(spec.base, overrides, problems), values)
    data = set_path(data, "run.storage_path", spec.train_storage)
    if spec.tracking_uri:
        data = set_path(data, "tracking.uri", spec.tracking_uri)
        data = set_path(data, "tracking.experiment", spec.experiment)
    if problems:
        raise ConfigError(f"trial of {spec.name}", problems)
    cfg = validate(data, ExperimentConfig, f"trial of {spec.name} with {config}")
    tags[TASK_TYPES_TAG] = json.dumps({t: cfg.dataset.task(t).type for t in cfg.task_names()})
    return cfg, {**spec.extra_tags, **tags}


def run_trial(config: dict, spec: TrialSpec) -> None:
    """Tune trainable (wrap with tune.with_parameters(run_trial, spec=spec))."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ple_adatt.launch.fit import fit
    from ple_adatt.tracking import mlflow_tracking as mt

    trial_id = ray.tune.get_context().get_trial_id()
    cfg, tags = build_trial_config(spec, config)
    run_name = trial_run_name(spec.name, trial_id)
    if cfg.tracking.enabled and spec.tracking_uri:
        # Create (or re-open, on restore) the child run with its tags before training starts;
        # fit() then finds it by run name and logs into it.
        mt.start_run(spec.tracking_uri, spec.experiment, run_name,
                     flatten(cfg.model_dump(mode="json", exclude={"dataset"})),
                     parent_run_id=spec.parent_run_id,
                     tags={**tags, TRIAL_TAG: trial_id, NAME_TAG: spec.name, "dataset": cfg.dataset.name})
    fit(cfg, run_name=run_name, callbacks=[TuneReportCallback()], parent_run_id=spec.parent_run_id,
        verbose=False, fail_run_on_error=False)  # the RunCloser (driver) ends this run with Tune's status


# ----------------------------------------------------------------------------- closing child runs

MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "KILLED", "error": "FAILED"}


def close_trial_run(uri: str, experiment: str, name: str, trial_id: str, status: str, last_result: dict | None) -> None:
    """End a trial's MLflow child run with its Tune status: the status tag, the last reported metrics
    (final_metrics.json) and FINISHED / KILLED / FAILED. Tune's status is the authority: a run fit()
    already ended keeps its artifacts (a completed trial logs its own final files) but takes this
    status if it differs."""
    import tempfile
    from pathlib import Path

    from ple_adatt.tracking import mlflow_tracking as mt
    from ple_adatt.tracking import queries

    client = queries.client(uri)
    exp = client.get_experiment_by_name(experiment)
    run = queries.run_by_name(uri, exp.experiment_id, trial_run_name(name, trial_id)) if exp else None
    if run is None:
        return
    log = mt.RunLogger(uri, run.info.run_id)
    log.set_tag("tune.status", status)
    log.set_tag(TRIAL_TAG, trial_id)
    if run.info.status != "RUNNING":
        if run.info.status != MLFLOW_STATUS[status]:
            log.finish(MLFLOW_STATUS[status])
        return
    final = {k: v for k, v in (last_result or {}).items() if isinstance(v, (int, float, str)) and k != "config"}
    with tempfile.TemporaryDirectory(prefix="ple-adatt-") as d:
        path = Path(d) / "final_metrics.json"
        path.write_text(json.dumps(final, indent=2, sort_keys=True, default=str))
        log.log_artifact(path)
    log.finish(MLFLOW_STATUS[status])
