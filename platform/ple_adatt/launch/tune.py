"""Hyperparameter campaigns: Ray Tune + Optuna (define-by-run, TPE) + ASHA over one experiment.

    campaign = prepare_campaign("configs/tune/tiny_asha.yaml", ["dataset=/data/x.yaml"])  # no Ray yet
    outcome = run_campaign(campaign)

`prepare_campaign` validates everything before Ray starts (all errors at once, with key paths):
search paths exist in the experiment schema and every categorical value / bound produces a valid
experiment; bounds and choices are sane; the objective is a metric the experiment reports; budget
and scheduler fit the objective. `run_campaign` starts or resumes the Tune experiment
`<run.storage_path>/<campaign>` (re-running the same command resumes; finished trials are kept),
opens an MLflow parent run with one child per trial, and writes the summary to
`<run.storage_path>/<campaign>/summary/`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ple_adatt.config import storage as st
from ple_adatt.config.loading import ConfigError, apply_overrides, flatten, read_yaml, validate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.config.sweeps import CampaignConfig, Objective
from ple_adatt.launch.search_space import DefineByRun, base_point, check_search_space, optuna_distributions
from ple_adatt.launch.sweep import (
    absolutize_dataset_refs,
    check_datasets,
    clean_problems,
    close_parent_run,
    cluster_concurrency,
    fit_tuner,
    interrupted,
    known_metrics,
    load_base,
    open_parent_run,
    partial_checks,
    run_config,
    split_cli_overrides,
)
from ple_adatt.launch.trial import KIND_TAG, TrialSpec, close_trial_run, decode_choice, encode_choice
from ple_adatt.train.metrics import metric_mode

CAMPAIGN_FIELDS = set(CampaignConfig.model_fields)


# ============================================================================ loading + checks

@dataclass
class Campaign:
    config: CampaignConfig
    base: dict
    """Base experiment dict with the campaign overrides applied (what every trial starts from)."""
    base_cfg: ExperimentConfig
    source: str

    @property
    def metrics(self) -> list[str]:
        return self.config.objective.metrics()

    @property
    def modes(self) -> list[str]:
        return objective_modes(self.config)

    # The Optuna encoding of the space, for report/tune_summary (report sits below launch).
    def decode(self, value: Any) -> Any:
        return decode_choice(value)

    def encode(self, value: Any) -> Any:
        return encode_choice(value)

    def distributions(self, params: dict) -> dict:
        return optuna_distributions(self.config.search_space, params)


def prepare_campaign(path: str | Path, cli_overrides: list[str] | None = None) -> Campaign:
    """Load + validate a campaign and its base experiment; raise one ConfigError with every problem."""
    own, exp = split_cli_overrides(list(cli_overrides or []), CAMPAIGN_FIELDS)
    problems: list[str] = []
    raw = apply_overrides(read_yaml(path), own, problems)
    try:
        cc = validate(raw, CampaignConfig, str(path))
    except ConfigError as e:
        problems += clean_problems(e.problems)
        if not any(p.startswith("scheduler:") for p in problems):
            problems += _raw_checks(raw)
        problems += partial_checks(path, raw, exp, lambda _b, cfg, _f: _objective_probe(raw, cfg))
        raise ConfigError(str(path), problems) from None
    folder = Path(path).resolve().parent
    cc = cc.model_copy(update={"overrides": absolutize_dataset_refs(list(cc.overrides), folder) + exp})
    base, base_cfg = load_base(path, cc.base, cc.overrides, problems)
    if base_cfg is not None:
        problems += check_search_space(cc, base)
        problems += check_objective(cc, base_cfg)
    if problems:
        raise ConfigError(str(path), problems)
    return Campaign(cc, base, base_cfg, str(path))


def _raw_checks(raw: dict) -> list[str]:
    """Cross-field checks pydantic skips when a field already failed (so all errors show at once)."""
    metric = (raw.get("objective") or {}).get("metric") if isinstance(raw.get("objective"), dict) else None
    if raw.get("scheduler") and isinstance(metric, list) and len(metric) > 1:
        return ["scheduler: a scheduler (ASHA) needs a single objective; multi-objective search runs every "
                "trial to the end (remove scheduler:)"]
    return []


def _objective_probe(raw: dict, base_cfg: ExperimentConfig) -> list[str]:
    """The objective check of an invalid campaign file (best effort: its schema errors come first)."""
    obj = raw.get("objective") if isinstance(raw.get("objective"), dict) else {}
    metric = obj.get("metric")
    if not isinstance(metric, (str, list)):
        return []
    try:
        probe = CampaignConfig.model_construct(objective=Objective.model_construct(metric=metric), scheduler=None)
        return check_objective(probe, base_cfg)
    except Exception:  # noqa: BLE001 - best effort only; the schema errors are already reported
        return []


def check_objective(cc: CampaignConfig, cfg: ExperimentConfig) -> list[str]:
    known = known_metrics(cfg)
    problems = []
    for m in cc.objective.metrics():
        if m not in known:
            parts = m.split("/")
            hint = ""
            if len(parts) == 3 and parts[1] in cfg.task_names():
                ttype = cfg.dataset.task(parts[1]).type
                hint = f"; task '{parts[1]}' is {ttype}: it reports {sorted(k for k in known if k.startswith(f'val/{parts[1]}/'))}"
            elif len(parts) == 4 and parts[1] == "avg":
                hint = f"; per-type averages here: {sorted(k for k in known if k.startswith('val/avg/'))}"
            else:
                hint = f"; tasks: {cfg.task_names()}; e.g. val/loss, val/avg/<type>/<metric>, val/<task>/<metric>"
            problems.append(f"objective.metric: '{m}' is not reported by this experiment{hint}")
    if cc.scheduler is not None and cc.scheduler.max_t is not None and cc.scheduler.max_t > cfg.train.epochs:
        problems.append(f"scheduler.max_t: {cc.scheduler.max_t} exceeds train.epochs={cfg.train.epochs}")
    if cc.scheduler is not None and cc.scheduler.grace_period >= (cc.scheduler.max_t or cfg.train.epochs):
        problems.append(f"scheduler.grace_period: {cc.scheduler.grace_period} must be < max_t "
                        f"({cc.scheduler.max_t or cfg.train.epochs} = train.epochs unless set): nothing could be stopped")
    return problems


def objective_modes(cc: CampaignConfig) -> list[str]:
    o = cc.objective
    if o.mode is None:
        return [metric_mode(m) for m in o.metrics()]
    return list(o.mode) if isinstance(o.mode, list) else [o.mode]


# ============================================================================ running

@dataclass
class CampaignOutcome:
    name: str
    experiment_path: str
    interrupted: bool
    trials: Any = None
    """pandas DataFrame: one row per trial, sorted by the objective (None when interrupted)."""
    best_config_path: str | None = None
    summary_dir: str | None = None
    parent_run_id: str | None = None
    pareto: Any = None


def run_campaign(campaign: Campaign, *, tune_callbacks: list | None = None, verbose: int = 1) -> CampaignOutcome:
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    import optuna

    from ple_adatt.launch.fit import storage_dir

    cc, base_cfg = campaign.config, campaign.base_cfg
    check_datasets([base_cfg])  # before Ray starts
    n = cluster_concurrency(base_cfg, cc.budget.num_trials, cc.budget.max_concurrent)
    storage = storage_dir(base_cfg)
    exp_path = st.join(storage, cc.name)
    uri, experiment, parent = open_parent_run(
        base_cfg, storage, f"tune-{cc.name}", flatten(cc.model_dump(mode="json")),
        {KIND_TAG: "tune_campaign", "ple_adatt.campaign": cc.name}, experiment=cc.name)
    spec = TrialSpec(name=cc.name, base=campaign.base, train_storage=st.join(exp_path, "train"),
                     tracking_uri=uri, experiment=experiment, parent_run_id=parent)
    metrics, modes = campaign.metrics, campaign.modes

    def new_tuner(trainable):
        sampler = (optuna.samplers.TPESampler(seed=cc.sampler.seed) if cc.sampler.name == "tpe"
                   else optuna.samplers.RandomSampler(seed=cc.sampler.seed))
        point = base_point(cc.search_space, base_cfg) if cc.sampler.evaluate_base else {}
        single = len(metrics) == 1
        search = OptunaSearch(space=DefineByRun(dict(cc.search_space)),
                              metric=metrics[0] if single else metrics, mode=modes[0] if single else modes,
                              sampler=sampler, seed=cc.sampler.seed,
                              points_to_evaluate=[point] if point else None)
        scheduler = None
        if cc.scheduler is not None:
            scheduler = ASHAScheduler(time_attr="training_iteration", metric=metrics[0], mode=modes[0],
                                      max_t=cc.scheduler.max_t or base_cfg.train.epochs,
                                      grace_period=cc.scheduler.grace_period,
                                      reduction_factor=cc.scheduler.reduction_factor)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=cc.budget.num_trials,
                                        max_concurrent_trials=n),
            run_config=run_config(cc.name, storage, verbose, cc.max_failures, tune_callbacks, spec=spec,
                                  metrics=metrics, params=list(cc.search_space), max_t=max_t(campaign)))

    results = fit_tuner(exp_path, f"campaign {cc.name}", spec, new_tuner)
    if interrupted(results, cc.budget.num_trials, f"campaign {cc.name}", "trials"):
        return CampaignOutcome(cc.name, str(exp_path), True, parent_run_id=parent)
    return finish_campaign(campaign, results, exp_path, uri, parent)


def finish_campaign(campaign: Campaign, results, exp_path: str, uri: str | None, parent: str | None
                    ) -> CampaignOutcome:
    """Write the summary (report/tune_summary.py), then record it in MLflow: each child run gets its
    Tune status, the parent run the summary files and the best values."""
    from ple_adatt.report.tune_summary import write_summary

    summary_dir = st.join(str(exp_path), "summary")
    with st.staged(summary_dir) as local:  # remote storage: written here, uploaded at the end
        s = write_summary(campaign, results, local)
        if uri and parent:
            _tag_trial_runs(campaign, s.trials, uri, parent)
        best = s.best
        close_parent_run(uri, parent, [Path(s.summary_dir) / f for f in s.files], "summary",
                         {f"best/{m}": best[m] for m in campaign.metrics} if best is not None else None,
                         {"best_trial": str(best["trial_id"])} if best is not None else None)
    if st.local_path(summary_dir) is None:  # report where the files are, not the staging folder
        s.best_config_path = s.best_config_path and st.join(summary_dir, Path(s.best_config_path).name)
        s.summary_dir = summary_dir
    return CampaignOutcome(campaign.config.name, str(exp_path), False, s.trials, s.best_config_path, s.summary_dir,
                           parent, s.pareto)


def _tag_trial_runs(campaign: Campaign, df, uri: str, parent: str) -> None:
    """Tag each trial's child run with its final Tune status (from its whole result history) and end
    any run still RUNNING (the RunCloser callback ends them as trials end; this covers a campaign
    interrupted and restored between a trial's end and its callback)."""
    from ple_adatt.tracking import queries

    experiment = queries.client(uri).get_experiment(queries.experiment_of(uri, parent)).name
    for _, row in df.iterrows():
        last = {m: row[m] for m in campaign.metrics} | {"epoch": int(row["epochs"]) - 1}
        close_trial_run(uri, experiment, campaign.config.name, row["trial_id"], row["status"], last)


def max_t(campaign: Campaign) -> int:
    """Epochs a trial must reach to count as completed: the scheduler's max_t, else train.epochs."""
    cc = campaign.config
    return cc.scheduler.max_t if cc.scheduler and cc.scheduler.max_t else campaign.base_cfg.train.epochs


def load_campaign(path: str | Path, dataset_overrides: list[str] | None = None) -> CampaignConfig:
    """The campaign schema only; with `dataset_overrides` (e.g. ["dataset=/tmp/stand-in.yaml"]) the
    full pre-Ray validation too (base, search space, objective) against that dataset."""
    if dataset_overrides is None:
        return validate(read_yaml(path), CampaignConfig, str(path))
    return prepare_campaign(path, list(dataset_overrides)).config
