"""What tuning campaigns (tune.py) and ablation studies (ablate.py) share.

Both are one Tune experiment `<run.storage_path>/<name>` over one base experiment, run by the
trial driver of trial.py, with an MLflow parent run holding one child per trial:

    own, exp = split_cli_overrides(cli, fields)         # campaign/study keys vs experiment keys
    base, base_cfg = load_base(path, base, overrides, problems)
    n = cluster_concurrency(base_cfg, num_runs, cap)     # starts Ray
    uri, experiment, parent = open_parent_run(base_cfg, storage, run_name, params, tags)
    results = fit_tuner(exp_path, label, spec, new_tuner)   # resumes when the experiment exists
    close_parent_run(uri, parent, files, "report")

Checks that need the metric registry (train/metrics.py) live here too: the schemas in
config/sweeps.py sit below train and cannot import it.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable

from ple_adatt.config.loading import ConfigError, apply_overrides, load_config_dict, validate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.config.paths import resolve_dataset_overrides
from ple_adatt.config.sweeps import base_path
from ple_adatt.train.metrics import METRICS_BY_TYPE, check_checkpoint_metric

# ============================================================================ loading


absolutize_dataset_refs = resolve_dataset_overrides
"""`dataset=rel/path.yaml` inside a campaign/study file is relative to that file (like `base:`)."""


def split_cli_overrides(overrides: list[str], fields: set[str]) -> tuple[list[str], list[str]]:
    """CLI `key=value`: keys whose first segment is a campaign/study field edit that file
    (budget.num_trials=4); every other key is an experiment override (dataset=..., train.epochs=3)."""
    own, exp = [], []
    for o in overrides:
        (own if o.split("=", 1)[0].split(".")[0] in fields else exp).append(o)
    return own, exp


def load_base(config_path: str | Path, base: str, overrides: list[str], problems: list[str],
              prefix: str = "base") -> tuple[dict | None, ExperimentConfig | None]:
    """The base experiment (relative to the campaign/study file) with `overrides` applied, as a dict
    and validated; problems are appended to `problems` (prefixed) instead of raised."""
    path = base_path(config_path, base)
    try:
        data = load_config_dict(path)
    except ConfigError as e:
        problems += [f"{prefix}: {p}" for p in e.problems]
        return None, None
    data = apply_overrides(data, overrides, problems)
    try:
        cfg = validate(data, ExperimentConfig, str(path))
    except ConfigError as e:
        problems += [f"{prefix} ({path}): {p}" for p in e.problems]
        return data, None
    try:  # a metric the runs will never report: every trial would fail after its first epoch
        check_checkpoint_metric(cfg)
    except ValueError as e:
        problems.append(f"{prefix} ({path}): {e}")
    return data, cfg


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


def partial_checks(path, raw: dict, exp: list[str],
                   more: Callable[[dict, ExperimentConfig, Path], list[str]]) -> list[str]:
    """When the campaign/study file itself is invalid, still load its base (and run `more(base,
    base_cfg, folder)` on it when it loads) so one run shows every error."""
    problems: list[str] = []
    if not isinstance(raw.get("base"), str):
        return problems
    folder = Path(path).resolve().parent
    over = raw.get("overrides") if isinstance(raw.get("overrides"), list) else []
    base, base_cfg = load_base(path, raw["base"], absolutize_dataset_refs([str(o) for o in over], folder) + exp,
                               problems)
    if base_cfg is not None:
        problems += more(base, base_cfg, folder)
    return problems


# ============================================================================ metrics


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
                out[f"val/{t}/oracle_gap_{m}"] = f"{t} oracle gap in {m} (positive = model worse)"
    for tt in dict.fromkeys(types):
        for m in METRICS_BY_TYPE[tt]:
            out[f"val/avg/{tt}/{m}"] = f"mean {m} over {tt} tasks"
    return out


def check_report_metrics(metrics: dict[str, list[str]], key: str = "metrics") -> list[str]:
    """A study's `metrics:` (task type -> per-task metric names) names only reported metrics."""
    problems = []
    for tt, names in metrics.items():
        bad = [m for m in names if m not in METRICS_BY_TYPE[tt]]
        if bad:
            problems.append(f"{key}.{tt}: {bad} not reported for {tt} tasks (valid: {list(METRICS_BY_TYPE[tt])})")
    return problems


# ============================================================================ resources + running


def check_datasets(cfgs: Iterable[ExperimentConfig]) -> None:
    """Every distinct dataset of the runs has its train and val splits (before Ray starts)."""
    import json

    from ple_adatt.data.files import check_dataset

    seen = set()
    for cfg in cfgs:
        key = json.dumps(cfg.dataset.model_dump(mode="json"), sort_keys=True)
        if key not in seen:
            seen.add(key)
            check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())


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


def cluster_concurrency(base_cfg: ExperimentConfig, num_runs: int, cap: int | None) -> int:
    """Join or start Ray, then the number of trials that run at once (derive_max_concurrent)."""
    import ray

    from ple_adatt.launch.fit import ensure_ray, local_cpus_needed

    ensure_ray(local_cpus_needed(base_cfg) + 1)  # + the Tune trial driver
    resources = ray.cluster_resources()
    n = derive_max_concurrent(resources, base_cfg, num_runs, cap)
    print(f"[ple-adatt] {concurrency_reason(resources, base_cfg, num_runs, cap, n)}", flush=True)
    return n


def concurrency_reason(resources: dict[str, float], cfg: ExperimentConfig, num_runs: int, cap: int | None,
                       n: int) -> str:
    """One line: how many trials run at once and what limits it (the numbers of derive_max_concurrent)."""
    s = cfg.scaling
    cpus, per = resources.get("CPU", 0.0), 1 + s.num_workers * s.cpus_per_worker
    why = (f"the cluster has {cpus:g} CPUs, {max(1.0, 0.1 * cpus):g} kept for Ray Data, and one trial takes "
           f"{per:g} (1 Tune driver + scaling.num_workers={s.num_workers} x cpus_per_worker={s.cpus_per_worker:g})")
    if s.use_gpu:
        why += f"; {resources.get('GPU', 0.0):g} GPUs / {s.num_workers * s.gpus_per_worker:g} per trial"
    limits = [f"{num_runs} runs"] if n == num_runs else []
    limits += [f"max_concurrent={cap}"] if cap and n == cap else []
    want = min(num_runs, cap or num_runs)
    need = math.ceil(max(want * per + 1, want * per / 0.9) - 1e-9)  # inverts derive_max_concurrent's headroom
    return (f"running {n} trial(s) at once: {why}" + (f" (capped by {', '.join(limits)})" if limits else "")
            + ("" if n >= want else f"; {need} CPUs would run all {want} at once"))


def fit_tuner(exp_path: str | Path, label: str, spec, new_tuner: Callable):
    """Run the Tune experiment at `exp_path` with the trial driver: resumed (unfinished and errored
    trials re-run, finished ones kept) when it exists, else `new_tuner(trainable)`. -> ResultGrid."""
    import ray.tune as tune

    from ple_adatt.launch.trial import run_trial

    trainable = tune.with_parameters(run_trial, spec=spec)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic reporter: it shows our columns (live_table_reporter)
    if tune.Tuner.can_restore(str(exp_path)):
        print(f"[ple-adatt] resuming {label} from {exp_path}", flush=True)
        tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = new_tuner(trainable)
    return tuner.fit()


def run_config(name: str, storage: str, verbose: int, max_failures: int, callbacks: list | None,
               spec=None, metrics: list[str] | None = None, params: list[str] | None = None, max_t: int | None = None):
    """The Tune RunConfig of a campaign or study (trial-level retries: FailureConfig). With `spec`
    (trial.TrialSpec) a RunCloser ends every trial's MLflow child run; the live table shows
    `metrics` and the searched `params` (live_table_reporter)."""
    import ray.tune as tune

    from ple_adatt.launch.run_closer import RunCloser

    closer = [RunCloser(spec.tracking_uri, spec.experiment, spec.name, max_t)] if spec is not None and spec.tracking_uri else []
    return tune.RunConfig(name=name, storage_path=storage, verbose=verbose,
                          failure_config=tune.FailureConfig(max_failures=max_failures),
                          callbacks=list(callbacks or []) + closer,
                          progress_reporter=live_table_reporter(metrics, params) if verbose and metrics else None)


def live_table_reporter(metrics: list[str], params: list[str] | None):
    """Tune's live trial table with the objective(s), the epoch and the searched parameters (Ray's
    default table shows the first four reported keys instead). Ray's newer console output ignores
    custom reporters, so fit_tuner switches it off (RAY_AIR_NEW_OUTPUT=0)."""
    from ray.tune import CLIReporter

    return CLIReporter(metric_columns={**{m: m for m in metrics}, "epoch": "epoch (0-based)"},
                       parameter_columns=list(params or []), max_report_frequency=30)


def interrupted(results, expected: int, label: str, unit: str) -> bool:
    """True (and says how to resume) when fewer than `expected` trials ended."""
    done = results.num_terminated + results.num_errors
    if done < expected:
        print(f"[ple-adatt] {label} interrupted after {done}/{expected} {unit}; "
              f"re-run the same command to resume", flush=True)
    return done < expected


# ============================================================================ MLflow parent run


def open_parent_run(base_cfg: ExperimentConfig, storage: str, run_name: str, params: dict,
                    tags: dict, experiment: str) -> tuple[str | None, str | None, str | None]:
    """(tracking uri, experiment, parent run id) of the campaign/study; all None with tracking off.
    `experiment` is the campaign/study name: its own MLflow experiment holds the parent run and,
    nested under it, one child run per trial (never mixed with ordinary training runs).
    Re-opens the parent run of the same name on resume."""
    from ple_adatt.tracking import mlflow_tracking as mt
    from ple_adatt.tracking.lineage import git_tags

    if not base_cfg.tracking.enabled:
        return None, None, None
    uri = mt.resolve_tracking_uri(base_cfg.tracking.uri, storage)
    run_id, _ = mt.start_run(uri, experiment, run_name, params, tags={**tags, **git_tags()})
    return uri, experiment, run_id


def close_parent_run(uri: str | None, parent: str | None, files: Iterable[Path], artifact_path: str,
                     metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    """Attach the summary/report files (and best values) to the parent run and mark it FINISHED."""
    if not (uri and parent):
        return
    from ple_adatt.tracking import mlflow_tracking as mt

    log = mt.RunLogger(uri, parent)
    for f in files:
        log.log_artifact(f, artifact_path)
    if metrics:
        log.log_metrics(metrics, step=0)
    for k, v in (tags or {}).items():
        log.set_tag(k, v)
    log.finish("FINISHED")
