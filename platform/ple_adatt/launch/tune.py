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

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ple_adatt.config.loading import load_config_dict
from ple_adatt.config.loading import ConfigError, apply_overrides, config_to_yaml, flatten, read_yaml, validate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.config.sweeps import (
    CampaignConfig,
    Objective,
    CategoricalParam,
    FloatParam,
    IntParam,
    base_path,
)
from ple_adatt.launch.trial import (
    KIND_TAG,
    TRIAL_TAG,
    TrialSpec,
    decode_choice,
    encode_choice,
    get_path,
    run_trial,
    set_path,
    trial_run_name,
)

# Metrics reported per task type by train/metrics.py (keep in sync: test_search_space checks it).
METRICS_BY_TYPE = {"binary": ("auc", "pr_auc", "logloss"),
                   "multiclass": ("accuracy", "macro_f1", "top3", "logloss"),
                   "contrastive": ("accuracy", "macro_f1", "top3", "logloss"),
                   "regression": ("mae", "rmse", "r2")}
LOWER_IS_BETTER = {"loss", "logloss", "mae", "rmse", "mse"}
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


def absolutize_dataset_refs(overrides: list[str], folder: Path) -> list[str]:
    """`dataset=rel/path.yaml` inside a campaign/study file is relative to that file (like `base:`)."""
    out = []
    for o in overrides:
        if o.startswith("dataset=") and not Path(o[8:]).is_absolute() and "://" not in o:
            o = f"dataset={(folder / o[8:]).resolve()}"
        out.append(o)
    return out


def split_cli_overrides(overrides: list[str], fields: set[str]) -> tuple[list[str], list[str]]:
    """CLI `key=value`: keys whose first segment is a campaign/study field edit that file
    (budget.num_trials=4); every other key is an experiment override (dataset=..., train.epochs=3)."""
    own, exp = [], []
    for o in overrides:
        (own if o.split("=", 1)[0].split(".")[0] in fields else exp).append(o)
    return own, exp


def load_base(config_path: str | Path, base: str, overrides: list[str], problems: list[str],
              prefix: str = "base") -> tuple[dict | None, ExperimentConfig | None]:
    path = base_path(config_path, base)
    try:
        data = load_config_dict(path)
    except ConfigError as e:
        problems += [f"{prefix}: {p}" for p in e.problems]
        return None, None
    data = apply_overrides(data, overrides, problems)
    try:
        return data, validate(data, ExperimentConfig, str(path))
    except ConfigError as e:
        problems += [f"{prefix} ({path}): {p}" for p in e.problems]
        return data, None


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
        problems += _partial_checks(path, raw, exp)
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


def _partial_checks(path, raw: dict, exp: list[str]) -> list[str]:
    """When the campaign itself is invalid, still check its base and objective (one run, all errors)."""
    problems: list[str] = []
    if not isinstance(raw.get("base"), str):
        return problems
    over = raw.get("overrides") if isinstance(raw.get("overrides"), list) else []
    _, base_cfg = load_base(path, raw["base"], absolutize_dataset_refs([str(o) for o in over],
                                                                      Path(path).resolve().parent) + exp, problems)
    obj = raw.get("objective") if isinstance(raw.get("objective"), dict) else {}
    metric = obj.get("metric")
    if base_cfg is not None and isinstance(metric, (str, list)):
        try:
            probe = CampaignConfig.model_construct(objective=Objective.model_construct(metric=metric), scheduler=None)
            problems += check_objective(probe, base_cfg)
        except Exception:  # noqa: BLE001 - best effort only; the schema errors are already reported
            pass
    return problems


def clean_problems(problems: list[str]) -> list[str]:
    """Cross-field validator messages arrive as one '<root>: Value error, a; b' line: split them;
    drop the union tags (float/int/categorical) from key paths."""
    out = []
    for p in problems:
        if p.startswith("<root>: Value error, "):
            out += p[len("<root>: Value error, "):].split("; ")
            continue
        key, _, msg = p.partition(": ")
        key = re.sub(r"\.(float|int|categorical)(?=\.|$)", "", key)
        out.append(f"{key}: {msg.replace('Value error, ', '')}")
    return out


def candidate_values(p) -> list[Any]:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, IntParam):
        return [p.low, p.high]
    return [p.low, p.high]


def _condition_values(cc: CampaignConfig, path: str) -> dict[str, Any]:
    """One assignment of the parameters `path` depends on (transitively) that activates it."""
    out: dict[str, Any] = {}
    for dep, allowed in (cc.search_space[path].when or {}).items():
        out.update(_condition_values(cc, dep))
        out[dep] = allowed[0] if isinstance(allowed, list) else allowed
    return out


def check_search_space(cc: CampaignConfig, base: dict) -> list[str]:
    """Every path exists, every categorical value and both bounds give a valid experiment, and every
    `when:` value is one of the parent's choices."""
    problems: list[str] = []
    for path, p in cc.search_space.items():
        for dep, allowed in (p.when or {}).items():
            parent = cc.search_space.get(dep)
            if isinstance(parent, CategoricalParam):
                for a in (allowed if isinstance(allowed, list) else [allowed]):
                    if a not in parent.choices:
                        problems.append(f"search_space.{path}.when.{dep}: {a!r} is not one of its choices "
                                        f"{parent.choices}")
        cond = _condition_values(cc, path)
        for value in candidate_values(p):
            data = base
            try:
                for k, v in {**cond, path: value}.items():
                    data = set_path(data, k, v)
            except KeyError as e:
                problems.append(f"search_space.{path}: {e.args[0]}")
                break
            try:
                validate(data, ExperimentConfig)
            except ConfigError as e:
                unknown = [q for q in e.problems if "unknown key" in q]
                if unknown:
                    problems.append(f"search_space.{path}: no such config key ({'; '.join(unknown)})")
                    break
                when = f" (with {cond})" if cond else ""
                problems.append(f"search_space.{path}: value {value!r}{when} gives an invalid experiment: "
                                + "; ".join(e.problems))
    return problems


def known_metrics(cfg: ExperimentConfig) -> dict[str, str]:
    """Every metric rank 0 reports for this experiment -> a short description."""
    out = {"val/loss": "weighted validation loss", "train/loss": "weighted train loss"}
    types = []
    for t in cfg.task_names():
        task = cfg.dataset.task(t)
        types.append(task.type)
        out[f"val/{t}/loss"] = f"{t} validation loss"
        for m in METRICS_BY_TYPE[task.type]:
            out[f"val/{t}/{m}"] = f"{t} ({task.type}) {m}"
            if task.oracle:
                out[f"val/{t}/oracle_gap_{m}"] = f"{t} oracle {m} - model {m}"
    for tt in dict.fromkeys(types):
        for m in METRICS_BY_TYPE[tt]:
            out[f"val/avg/{tt}/{m}"] = f"mean {m} over {tt} tasks"
    return out


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


def metric_mode(metric: str) -> str:
    """min for losses and errors, max for scores; oracle gaps: min for scores, max for errors."""
    last = metric.rsplit("/", 1)[-1]
    if last.startswith("oracle_gap_"):
        return "max" if last[len("oracle_gap_"):] in LOWER_IS_BETTER else "min"
    return "min" if last in LOWER_IS_BETTER else "max"


def objective_modes(cc: CampaignConfig) -> list[str]:
    o = cc.objective
    if o.mode is None:
        return [metric_mode(m) for m in o.metrics()]
    return list(o.mode) if isinstance(o.mode, list) else [o.mode]


# ============================================================================ Optuna space

class DefineByRun:
    """Optuna define-by-run space over dotted paths (a class, so OptunaSearch can pickle it)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for path, p in self.space.items():
            if not active(p, chosen):
                continue
            if isinstance(p, FloatParam):
                chosen[path] = trial.suggest_float(path, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                chosen[path] = trial.suggest_int(path, p.low, p.high, log=p.log, step=p.step)
            else:
                chosen[path] = decode_choice(trial.suggest_categorical(path, [encode_choice(c) for c in p.choices]))
        return None


def active(p, chosen: dict[str, Any]) -> bool:
    for dep, allowed in (p.when or {}).items():
        if dep not in chosen:
            return False
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if chosen[dep] not in allowed:
            return False
    return True


def optuna_distributions(space: dict, params: dict) -> dict:
    import optuna.distributions as od

    out = {}
    for path in params:
        p = space[path]
        if isinstance(p, FloatParam):
            out[path] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[path] = od.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[path] = od.CategoricalDistribution([encode_choice(c) for c in p.choices])
    return out


def base_point(campaign: Campaign) -> dict[str, Any]:
    """The base experiment's own values of the searched parameters (those inside the space)."""
    space = campaign.config.search_space
    dump = campaign.base_cfg.model_dump(mode="json")
    point: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for path, p in space.items():
        if not active(p, chosen):
            continue
        v = get_path(dump, path, None)
        if v is None and path.startswith("tasks."):  # per-task defaults are not in the dump
            task = path.split(".")[1]
            if task in campaign.base_cfg.task_names():
                v = getattr(campaign.base_cfg.task_settings(task), path.split(".", 2)[2], None)
        if isinstance(p, CategoricalParam):
            if path.endswith(".loss") and path.startswith("tasks.") and v is None:
                v = campaign.base_cfg.task_loss(path.split(".")[1])
            if v not in p.choices:
                continue
            point[path] = encode_choice(v)
        else:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not p.low <= v <= p.high:
                continue
            point[path] = v
        chosen[path] = v
    return point


# ============================================================================ resources

def derive_max_concurrent(resources: dict[str, float], cfg: ExperimentConfig, num_trials: int,
                          cap: int | None) -> int:
    """Trials that fit at once: each needs 1 CPU (Tune driver) + its Train workers; ~10 % of the
    CPUs (at least 1) stay free for Ray Data. Raises if not even one trial fits. An elastic trial
    counts at its max workers: it grows to them whenever they are free."""
    s = cfg.scaling
    cpus = resources.get("CPU", 0.0)
    free = cpus - max(1.0, 0.1 * cpus)
    n = math.floor(free / (1.0 + s.max_workers * s.cpus_per_worker) + 1e-9)
    if s.use_gpu:
        n = min(n, math.floor(resources.get("GPU", 0.0) / (s.max_workers * s.gpus_per_worker) + 1e-9))
    if n < 1:
        raise ValueError(f"one trial needs 1 + scaling.num_workers (max) x cpus_per_worker = "
                         f"{1 + s.max_workers * s.cpus_per_worker:g} CPUs"
                         + (f" and {s.max_workers * s.gpus_per_worker:g} GPUs" if s.use_gpu else "")
                         + f" plus headroom for Ray Data; the cluster has {resources}")
    return max(1, min(n, num_trials, cap or n))


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


def tracking_setup(base_cfg: ExperimentConfig, storage: str, run_name: str, params: dict,
                   tags: dict) -> tuple[str | None, str | None, str | None]:
    from ple_adatt.tracking import mlflow_tracking as mt

    if not base_cfg.tracking.enabled:
        return None, None, None
    uri = mt.resolve_tracking_uri(base_cfg.tracking.uri, storage)
    experiment = base_cfg.tracking.experiment or base_cfg.name
    run_id, _ = mt.start_run(uri, experiment, run_name, params, tags=tags)
    return uri, experiment, run_id


def run_campaign(campaign: Campaign, *, tune_callbacks: list | None = None, verbose: int = 1) -> CampaignOutcome:
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    import optuna

    from ple_adatt.launch.fit import ensure_ray, local_cpus_needed, storage_dir

    from ple_adatt.data.files import check_dataset

    cc, base_cfg = campaign.config, campaign.base_cfg
    check_dataset(base_cfg.dataset, ("train", "val"), base_cfg.task_names())  # before Ray starts
    ensure_ray(local_cpus_needed(base_cfg) + 1)  # + the Tune trial driver
    import ray

    n = derive_max_concurrent(ray.cluster_resources(), base_cfg, cc.budget.num_trials, cc.budget.max_concurrent)
    storage = storage_dir(base_cfg)
    exp_path = Path(storage) / cc.name
    uri, experiment, parent = tracking_setup(
        base_cfg, storage, f"tune-{cc.name}", flatten(cc.model_dump(mode="json")),
        {KIND_TAG: "tune_campaign", "ple_adatt.campaign": cc.name})
    spec = TrialSpec(name=cc.name, base=campaign.base, train_storage=str(exp_path / "train"),
                     tracking_uri=uri, experiment=experiment, parent_run_id=parent)
    trainable = tune.with_parameters(run_trial, spec=spec)
    metrics, modes = campaign.metrics, campaign.modes
    if tune.Tuner.can_restore(str(exp_path)):
        print(f"[ple-adatt] resuming campaign {cc.name} from {exp_path}", flush=True)
        tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        sampler = (optuna.samplers.TPESampler(seed=cc.sampler.seed) if cc.sampler.name == "tpe"
                   else optuna.samplers.RandomSampler(seed=cc.sampler.seed))
        point = base_point(campaign) if cc.sampler.evaluate_base else {}
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
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=cc.budget.num_trials,
                                        max_concurrent_trials=n),
            run_config=tune.RunConfig(name=cc.name, storage_path=storage, verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=cc.max_failures),
                                      callbacks=list(tune_callbacks or [])))
    results = tuner.fit()
    done = results.num_terminated + results.num_errors
    if done < cc.budget.num_trials:
        print(f"[ple-adatt] campaign {cc.name} interrupted after {done}/{cc.budget.num_trials} trials; "
              f"re-run the same command to resume", flush=True)
        return CampaignOutcome(cc.name, str(exp_path), True, parent_run_id=parent)
    return write_summary(campaign, results, exp_path, uri, parent)


# ============================================================================ summary

def trials_table(campaign: Campaign, results) -> "pd.DataFrame":  # noqa: F821
    """One row per trial: trial_id, status, epochs, objective value(s), params; sorted by objective."""
    import pandas as pd

    cc = campaign.config
    max_t = (cc.scheduler.max_t if cc.scheduler and cc.scheduler.max_t else campaign.base_cfg.train.epochs)
    rows = []
    for order, r in enumerate(results):  # the ResultGrid lists trials in creation order
        m = r.metrics or {}
        it = int(m.get("training_iteration", 0) or 0)
        status = "error" if r.error is not None else ("completed" if it >= max_t else "early_stopped")
        row = {"trial_id": m.get("trial_id") or Path(r.path).name, "status": status, "epochs": it, "_order": order}
        for metric in campaign.metrics:
            v = m.get(metric)
            row[metric] = float(v) if isinstance(v, (int, float)) else math.nan
        hist = r.metrics_dataframe
        row["_history"] = ({int(i): float(v) for i, v in zip(hist["training_iteration"], hist[campaign.metrics[0]])
                            if isinstance(v, (int, float)) and math.isfinite(v)}
                           if hist is not None and campaign.metrics[0] in hist else {})
        for k, v in (r.config or {}).items():
            row[f"param:{k}"] = decode_choice(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    key, asc = campaign.metrics[0], campaign.modes[0] == "min"
    df["_rank"] = df["status"].map({"completed": 0, "early_stopped": 1, "error": 2})
    df = df.sort_values(["_rank", key], ascending=[True, asc], na_position="last").reset_index(drop=True)
    return df


def pareto_front(df, metrics: list[str], modes: list[str]):
    """Rows (completed, finite objectives) that no other such row dominates."""
    ok = df[(df["status"] == "completed")].dropna(subset=metrics)
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    vals = [[s * float(r[m]) for m, s in zip(metrics, signs)] for _, r in ok.iterrows()]
    keep = []
    for i, a in enumerate(vals):
        dominated = any(all(b[k] <= a[k] for k in range(len(a))) and any(b[k] < a[k] for k in range(len(a)))
                        for j, b in enumerate(vals) if j != i)
        keep.append(not dominated)
    return ok[keep]


def params_of(row) -> dict[str, Any]:
    return {k[len("param:"):]: row[k] for k in row.index
            if k.startswith("param:") and not (isinstance(row[k], float) and math.isnan(row[k]))}


def best_config_yaml(campaign: Campaign, values: dict[str, Any], run_name: str, header: list[str]) -> str:
    """A ready-to-run, self-contained experiment YAML (validated before it is returned)."""
    data = campaign.base
    for k, v in values.items():
        data = set_path(data, k, v)
    data = set_path(data, "run.name", run_name)
    cfg = validate(data, ExperimentConfig, f"best config of {campaign.config.name}")
    return "\n".join(f"# {h}" for h in header) + "\n" + config_to_yaml(cfg)


def export_optuna_study(campaign: Campaign, df, db_path: Path):
    """Persist every trial in an Optuna sqlite study (inspect with optuna-dashboard or optuna.load_study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db_path}"
    name = campaign.config.name
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    metrics, modes = campaign.metrics, campaign.modes
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=["minimize" if m == "min" else "maximize" for m in modes])
    space = campaign.config.search_space
    for _, row in df.sort_values("_order").iterrows():
        params = {k: v for k, v in params_of(row).items() if k in space}
        values = [row[m] for m in metrics]
        finite = all(isinstance(v, float) and math.isfinite(v) for v in values)
        if row["status"] == "completed" and finite:
            state, vals = optuna.trial.TrialState.COMPLETE, values
        elif row["status"] == "early_stopped":
            state, vals = optuna.trial.TrialState.PRUNED, None
        else:
            state, vals = optuna.trial.TrialState.FAIL, None
        study.add_trial(optuna.trial.create_trial(
            params={k: encode_choice(v) for k, v in params.items()},
            distributions=optuna_distributions(space, params), values=vals, state=state,
            intermediate_values=row["_history"] if len(metrics) == 1 else None,
            user_attrs={"tune_trial_id": row["trial_id"], "status": row["status"]}))
    return study


def _plots(study, campaign: Campaign, out: Path) -> tuple[list[str], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    import warnings

    metrics = campaign.metrics
    target = None if len(metrics) == 1 else (lambda t: t.values[0])
    kw = {} if target is None else {"target": target, "target_name": metrics[0]}
    made, notes = [], []
    jobs = [("optimization_history.png", lambda: ovm.plot_optimization_history(study, **kw)),
            ("parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(study, **kw))]
    if len(metrics) in (2, 3):
        jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=metrics)))
    for fname, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(out / fname, dpi=100)
            plt.close(fig)
            made.append(fname)
        except Exception as e:  # noqa: BLE001 - e.g. too few completed trials; said in the summary
            notes.append(f"{fname}: not drawn ({type(e).__name__}: {e})")
    return made, notes


def _md_table(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.5g}" if isinstance(v, float) else str(v) for v in r.values) + " |")
    return "\n".join(lines)


def write_summary(campaign: Campaign, results, exp_path: Path, uri: str | None, parent: str | None) -> CampaignOutcome:
    import optuna

    cc = campaign.config
    metrics, modes = campaign.metrics, campaign.modes
    out = exp_path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    df = trials_table(campaign, results)
    public = df[[c for c in df.columns if not c.startswith("_")]]
    public.to_csv(out / "trials.csv", index=False)
    study = export_optuna_study(campaign, df, out / "optuna.db")

    notes: list[str] = []
    try:
        sign = -1.0 if modes[0] == "max" else 1.0  # evaluators rank params by how they lower the target
        imp = optuna.importance.get_param_importances(
            study, target=None if len(metrics) == 1 else (lambda t: sign * t.values[0]))
    except Exception as e:  # noqa: BLE001 - needs >= 2 completed trials with varying params
        imp = {}
        notes.append(f"parameter importances not computed ({type(e).__name__}: {e})")
    import pandas as pd

    pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())}).to_csv(out / "importances.csv", index=False)
    plots, plot_notes = _plots(study, campaign, out)
    notes += plot_notes

    finished = df[df["status"] != "error"].dropna(subset=[metrics[0]])
    pareto = pareto_front(df, metrics, modes) if len(metrics) > 1 else None
    best_path = None
    files = ["trials.csv", "importances.csv", "optuna.db"] + plots
    if len(finished):
        best = (pareto.iloc[0] if pareto is not None and len(pareto) else finished.iloc[0])
        values = {k: v for k, v in params_of(best).items()}
        score = ", ".join(f"{m}={best[m]:.5g}" for m in metrics)
        header = [f"Best trial of tuning campaign {cc.name}: {best['trial_id']} ({score}).",
                  "Launch: python jobs/train.py --config <this file>",
                  "Override example: python jobs/train.py --config <this file> train.epochs=20 run.name=best-long",
                  "Tuned values: " + json.dumps(values, default=str)]
        best_path = out / "best_config.yaml"
        best_path.write_text(best_config_yaml(campaign, values, f"{cc.name}-best", header))
        files.append("best_config.yaml")
        if pareto is not None:
            pdir = out / "pareto"
            pdir.mkdir(exist_ok=True)
            for _, row in pareto.iterrows():
                (pdir / f"{row['trial_id']}.yaml").write_text(best_config_yaml(
                    campaign, params_of(row), f"{cc.name}-{row['trial_id']}",
                    [f"Pareto-optimal trial {row['trial_id']} of campaign {cc.name}: "
                     + ", ".join(f"{m}={row[m]:.5g}" for m in metrics)]))
            pareto[[c for c in pareto.columns if not c.startswith("_")]].to_csv(out / "pareto.csv", index=False)
            files.append("pareto.csv")
    else:
        notes.append("no trial finished with a finite objective: no best config written")

    counts = df["status"].value_counts().to_dict()
    lines = [f"# Tuning campaign {cc.name}", "",
             f"- base experiment: {campaign.base_cfg.name} ({cc.base}); overrides: {list(cc.overrides)}",
             f"- objective: " + ", ".join(f"{m} ({mo})" for m, mo in zip(metrics, modes)),
             f"- scheduler: {cc.scheduler.model_dump() if cc.scheduler else 'none'}; sampler: {cc.sampler.model_dump()}",
             f"- trials: {len(df)} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})",
             f"- Optuna study: sqlite:///{out / 'optuna.db'} (study name {cc.name})"]
    if cc.sampler.evaluate_base and len(df):
        first = df.sort_values("_order").iloc[0]
        lines.append(f"- base values (first, enqueued trial {first['trial_id']}): "
                     + ", ".join(f"{m}={first[m]:.5g}" for m in metrics) + f" [{first['status']}]")
    if best_path is not None:
        lines.append(f"- best: {best['trial_id']} " + ", ".join(f"{m}={best[m]:.5g}" for m in metrics)
                     + f" -> {best_path}")
    lines += ["", "## Trials (sorted by objective)", "", _md_table(public), ""]
    if pareto is not None:
        lines += ["## Pareto set", "", _md_table(pareto[[c for c in pareto.columns if not c.startswith("_")]]), ""]
    if imp:
        lines += ["## Parameter importances (optuna.importance, default evaluator)", "",
                  _md_table(pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})), ""]
    lines += [f"![{p}]({p})" for p in plots]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    files.append("summary.md")
    _track_summary(campaign, df, out, files, uri, parent, best if best_path is not None else None)
    print(f"[ple-adatt] campaign {cc.name}: {len(df)} trials; summary in {out}"
          + (f"; best config {best_path}" if best_path else ""), flush=True)
    return CampaignOutcome(cc.name, str(exp_path), False, df, str(best_path) if best_path else None, str(out),
                           parent, pareto)


def _track_summary(campaign: Campaign, df, out: Path, files: list[str], uri, parent, best) -> None:
    """Child runs get their Tune status; the parent gets the summary files and the best values."""
    if not (uri and parent):
        return
    from ple_adatt.tracking import mlflow_tracking as mt

    client = mt.RunLogger(uri, parent).client
    exp_id = client.get_run(parent).info.experiment_id
    for _, row in df.iterrows():
        name = trial_run_name(campaign.config.name, row["trial_id"])
        found = client.search_runs([exp_id], filter_string=f"tags.`{mt.RUN_NAME_TAG}` = '{name}'", max_results=1)
        if not found:
            continue
        rid = found[0].info.run_id
        client.set_tag(rid, "tune.status", row["status"])
        client.set_tag(rid, TRIAL_TAG, row["trial_id"])
        if row["status"] != "completed" and found[0].info.status == "RUNNING":
            client.set_terminated(rid, status="KILLED" if row["status"] == "early_stopped" else "FAILED")
    log = mt.RunLogger(uri, parent)
    for f in files:
        log.log_artifact(out / f, "summary")
    if best is not None:
        log.log_metrics({f"best/{m}": best[m] for m in campaign.metrics}, step=0)
        log.set_tag("best_trial", str(best["trial_id"]))
    log.finish("FINISHED")


def load_campaign(path: str | Path, dataset_overrides: list[str] | None = None) -> CampaignConfig:
    """The campaign schema only; with `dataset_overrides` (e.g. ["dataset=/tmp/stand-in.yaml"]) the
    full pre-Ray validation too (base, search space, objective) against that dataset."""
    if dataset_overrides is None:
        return validate(read_yaml(path), CampaignConfig, str(path))
    return prepare_campaign(path, list(dataset_overrides)).config
