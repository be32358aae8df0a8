"""Strict schemas for tuning campaigns (configs/tune/) and ablation studies (configs/ablation/).

A campaign = a base experiment + a search space over dotted config paths + budget + objective:

    name: tiny-asha
    base: ../smoke/tiny.yaml              # experiment YAML, relative to this file
    overrides: [train.epochs=3]           # applied to the base before the search space
    search_space:
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      model.arch: {type: categorical, choices: [ple, mmoe]}
      model.num_levels: {type: int, low: 1, high: 2, when: {model.arch: ple}}
    budget: {num_trials: 16, max_concurrent: null}      # null: derived from the cluster
    objective: {metric: val/avg/binary/auc}             # mode derived from the metric name
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    sampler: {name: tpe, seed: 0}

A study = a base experiment + named variants (lists of dotted overrides) x seeds. Everything here
is syntax; the checks against the experiment schema (paths exist, metrics exist) live in
`launch/search_space.py`, `launch/sweep.py`, `launch/tune.py` and `launch/ablate.py` because they need the
loaded base config and the metric registry (train/metrics.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ple_adatt.config.dataset import Section
from ple_adatt.config.loading import ConfigError
from ple_adatt.config.paths import resolve_path

Scalar = Union[bool, int, float, str, None]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Param(Section):
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None
    """Sample this parameter only when an earlier parameter of the space has this value (or one of
    these values), e.g. `when: {loss_weighting.name: gradnorm}` (Optuna define-by-run)."""


def _check_range(low: float, high: float, log: bool) -> None:
    """Bounds of a numeric search-space parameter (float or int)."""
    if low >= high:
        raise ValueError(f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")


class FloatParam(_Param):
    type: Literal["float"]
    """Selects a float parameter."""
    low: float
    """Lower bound (inclusive)."""
    high: float
    """Upper bound (inclusive)."""
    log: bool = False
    """Sample on a log scale (needs low > 0)."""
    step: float | None = Field(None, gt=0)
    """Discretise to multiples of step from low (not with log)."""

    @model_validator(mode="after")
    def _bounds(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntParam(_Param):
    type: Literal["int"]
    """Selects an int parameter."""
    low: int
    """Lower bound (inclusive)."""
    high: int
    """Upper bound (inclusive)."""
    log: bool = False
    """Sample on a log scale (needs low > 0)."""
    step: int = Field(1, ge=1)
    """Sample multiples of step from low."""

    @model_validator(mode="after")
    def _bounds(self):
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    """Selects a categorical parameter."""
    choices: list[Any] = Field(min_length=1)
    """Any YAML values (lists and mappings too: they are encoded for Optuna and decoded per trial)."""


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class Budget(Section):
    num_trials: int = Field(ge=1)
    """Trials to run in total."""
    max_concurrent: int | None = Field(None, ge=1)
    """Upper bound on parallel trials; the effective value is also capped by what the cluster can
    hold (CPUs or GPUs / per-trial need). None = derived from the cluster only."""


class Objective(Section):
    metric: str | list[str]
    """A metric rank 0 reports (e.g. val/loss, val/avg/binary/auc, val/<task>/mae); a list for
    multi-objective search (Pareto set, no scheduler)."""
    mode: Literal["min", "max"] | list[Literal["min", "max"]] | None = None
    """Default: derived from each metric's name (loss, logloss, mae, rmse -> min; auc ... -> max)."""

    @model_validator(mode="after")
    def _shape(self):
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if not metrics:
            raise ValueError("metric: empty list")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metric: duplicates in {metrics}")
        if self.mode is not None:
            modes = self.mode if isinstance(self.mode, list) else [self.mode]
            if isinstance(self.metric, list) != isinstance(self.mode, list) or len(modes) != len(metrics):
                raise ValueError(f"mode must match metric: one mode per metric, got metric={self.metric!r} "
                                 f"mode={self.mode!r}")
        return self

    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def multi(self) -> bool:
        return isinstance(self.metric, list) and len(self.metric) > 1


class AshaScheduler(Section):
    name: Literal["asha"] = "asha"
    """Selects ASHA (asynchronous successive halving)."""
    grace_period: int = Field(1, ge=1)
    """Epochs every trial gets before it can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)
    """At each rung only the best 1/reduction_factor of trials continue."""
    max_t: int | None = Field(None, ge=1)
    """Default: the base experiment's train.epochs."""


class Sampler(Section):
    name: Literal["tpe", "random"] = "tpe"
    """tpe (Optuna's TPE, multi-objective aware) or random."""
    seed: int = 0
    """Sampler seed (same seed and results = same suggestions)."""
    evaluate_base: bool = True
    """Enqueue the base experiment's own values as the first trial (default vs best in the summary)."""


class CampaignConfig(Section):
    name: str = Field(pattern=NAME_PATTERN)
    """Campaign name: the Tune experiment folder and the MLflow parent run. Re-running the same
    command with the same name resumes the campaign."""
    base: str
    """Base experiment YAML, relative to the campaign file."""
    overrides: list[str] = []
    """Experiment overrides (`key.path=value`) applied to the base before the search space."""
    search_space: dict[str, Param] = Field(min_length=1)
    """Dotted experiment path -> parameter; sampled in this order (a `when:` names earlier ones)."""
    budget: Budget
    """How many trials, how many at once."""
    objective: Objective
    """Metric(s) to optimise and their direction."""
    scheduler: AshaScheduler | None = None
    """Early stopping of weak trials (single objective only); None = every trial runs to the end."""
    sampler: Sampler = Sampler()
    """How trial values are suggested."""
    max_failures: int = Field(1, ge=0)
    """Trial-level retries (ray.tune.FailureConfig); Train-level retries come from run.max_failures."""

    @model_validator(mode="after")
    def _cross(self):
        errors = []
        if self.scheduler is not None and self.objective.multi():
            errors.append("scheduler: a scheduler (ASHA) needs a single objective; multi-objective "
                          "search runs every trial to the end (remove scheduler:)")
        seen: list[str] = []
        for path, p in self.search_space.items():
            for dep, _ in (p.when or {}).items():
                if dep not in seen:
                    errors.append(f"search_space.{path}.when: '{dep}' must be a parameter listed before "
                                  f"'{path}' (earlier parameters: {seen})")
                elif not isinstance(self.search_space[dep], CategoricalParam):
                    errors.append(f"search_space.{path}.when: '{dep}' must be a categorical parameter")
            seen.append(path)
        if errors:
            raise ValueError("; ".join(errors))
        return self


class SweepSection(Section):
    """Task-correlation sweep: each level is a list of overrides (typically `dataset=` a dataset
    generated with that correlation); every (variant, level, seed) is run."""

    name: str = "correlation"
    """Name of the swept quantity (an MLflow tag and the report's axis label)."""
    levels: dict[float, list[str]] = Field(min_length=2)
    """Level value -> overrides applied at that level (at least two levels)."""
    reference: float | None = None
    """Level whose runs feed the main (non-sweep) report sections; default: the first level."""

    @model_validator(mode="after")
    def _ref(self):
        if self.reference is not None and self.reference not in self.levels:
            raise ValueError(f"reference {self.reference} is not one of the levels {list(self.levels)}")
        return self

    def reference_level(self) -> float:
        return self.reference if self.reference is not None else next(iter(self.levels))


class StudyConfig(Section):
    name: str = Field(pattern=NAME_PATTERN)
    """Study name: the Tune experiment folder, the MLflow parent run, the report folder."""
    base: str
    """Base experiment YAML, relative to the study file."""
    overrides: list[str] = []
    """Experiment overrides applied to the base before each variant's own."""
    variants: dict[str, list[str]] = Field(min_length=2)
    """variant name -> dotted overrides applied on top of the base (an empty list = the base)."""
    baseline: str
    """The variant every other variant is compared with."""
    seeds: list[int] = [0, 1, 2, 3, 4]
    """Training seeds run for every variant (paired by seed in the statistics; at least 2)."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Significance level of the paired tests (family-wise or FDR, see correction)."""
    correction: Literal["holm", "bh"] = "holm"
    """Multiple-testing correction: holm (family-wise error) or bh (false discovery rate)."""
    metrics: dict[Literal["binary", "multiclass", "regression", "contrastive"], list[str]] | None = None
    """Per-task metrics compared in the report, per task type (fewer = less multiple-testing cost).
    None = the metric registry's defaults (train/metrics.py REPORT_METRICS_BY_TYPE), filled in when the
    study is prepared; names are checked against the registry there too."""
    sweep: SweepSection | None = None
    """Optional sweep: every variant is also run at each level."""
    max_concurrent: int | None = Field(None, ge=1)
    """Upper bound on parallel runs; None = as many as the cluster holds."""
    max_failures: int = Field(1, ge=0)
    """Run-level retries (ray.tune.FailureConfig); Train-level retries come from run.max_failures."""

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if len(v) < 2:
            raise ValueError(f"need at least 2 seeds for paired statistics, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate seeds in {v}")
        return v

    @model_validator(mode="after")
    def _cross(self):
        errors = []
        if self.baseline not in self.variants:
            errors.append(f"baseline: '{self.baseline}' is not a variant (variants: {list(self.variants)})")
        for v in self.variants:
            if not __import__("re").match(NAME_PATTERN, v):
                errors.append(f"variants.{v}: names use letters, digits, _ . - only")
        if errors:
            raise ValueError("; ".join(errors))
        return self


def base_path(config_path: str | Path, base: str) -> Path:
    """The base experiment path, relative to the campaign/study file (absolute paths kept)."""
    return Path(resolve_path(base, Path(config_path).resolve().parent))


__all__ = ["AshaScheduler", "Budget", "CampaignConfig", "CategoricalParam", "ConfigError", "FloatParam",
           "IntParam", "Objective", "Sampler", "StudyConfig", "SweepSection", "base_path"]
