"""Ablation studies: variants x seeds (x sweep levels) through a Ray Tune grid, then a statistics report.

    study = prepare_study("configs/ablation/adatt_on_off.yaml", ["seeds=[0,1,2]"])  # no Ray yet
    outcome = run_study(study)            # <run.storage_path>/<study>/report/report.{md,html}
    regenerate_report(study_name, uri)    # the same report, rebuilt from MLflow only

Every variant (at every sweep level) is validated before Ray starts, all errors at once, each
prefixed with the variant name. Runs are trials of one Tune experiment `<storage>/<study>` with
`grid_search` over variant and seed, so re-running the same command resumes the study and skips
finished runs. Each run is an MLflow child (tags `variant`, `seed`, sweep level) of the study's
parent run, which carries the report metadata, so `jobs/report.py --study NAME` needs nothing else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ple_adatt.config import storage as st
from ple_adatt.config.loading import ConfigError, apply_overrides, read_yaml, validate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.config.sweeps import StudyConfig
from ple_adatt.launch.sweep import (
    absolutize_dataset_refs,
    check_datasets,
    check_report_metrics,
    clean_problems,
    close_parent_run,
    cluster_concurrency,
    fit_tuner,
    interrupted,
    load_base,
    open_parent_run,
    partial_checks,
    run_config,
    split_cli_overrides,
)
from ple_adatt.launch.trial import KIND_TAG, TASK_TYPES_TAG, TrialSpec, build_trial_config
from ple_adatt.report.results import (
    adatt_diagnostics_from_mlflow,
    collect_from_mlflow,
    metric_rows,
    results_table,
    write_study_report,
)
from ple_adatt.tracking import queries
from ple_adatt.train.metrics import REPORT_METRICS_BY_TYPE

STUDY_KIND, STUDY_TAG, META_TAG, REPORT_DIR_TAG = "ablation_study", "ple_adatt.study", "ple_adatt.study_meta", "ple_adatt.report_dir"
STUDY_FIELDS = set(StudyConfig.model_fields)


@dataclass
class Study:
    config: StudyConfig
    base: dict
    base_cfg: ExperimentConfig
    source: str
    run_cfgs: dict[tuple, ExperimentConfig]
    """(variant, level or None) -> validated experiment (seed = the first seed)."""

    def levels(self) -> list[float | None]:
        return list(self.config.sweep.levels) if self.config.sweep else [None]

    def num_runs(self) -> int:
        return len(self.config.variants) * len(self.config.seeds) * len(self.levels())


def _spec(sc: StudyConfig, base: dict, storage: str = "", uri=None, experiment=None, parent=None) -> TrialSpec:
    return TrialSpec(name=sc.name, base=base, train_storage=storage, tracking_uri=uri, experiment=experiment,
                     parent_run_id=parent, variants={k: list(v) for k, v in sc.variants.items()},
                     levels={k: list(v) for k, v in sc.sweep.levels.items()} if sc.sweep else None,
                     level_name=sc.sweep.name if sc.sweep else "correlation")


def prepare_study(path: str | Path, cli_overrides: list[str] | None = None, *, replace_datasets: bool = False) -> Study:
    """Load + validate a study, its base and every (variant, level); one ConfigError with every problem.

    replace_datasets: drop the study's own `dataset=` overrides (variants, sweep levels) so the one in
    `cli_overrides` applies everywhere (config tests validate against small stand-in datasets)."""
    own, exp = split_cli_overrides(list(cli_overrides or []), STUDY_FIELDS)
    problems: list[str] = []
    raw = apply_overrides(read_yaml(path), own, problems)
    try:
        sc = validate(raw, StudyConfig, str(path))
    except ConfigError as e:
        raise ConfigError(str(path), problems + clean_problems(e.problems) + partial_checks(path, raw, exp, _variant_checks(raw))) from None
    folder = Path(path).resolve().parent
    if replace_datasets:
        keep = lambda over: [o for o in over if not o.startswith("dataset=")]  # noqa: E731
        sc = sc.model_copy(update={"variants": {k: keep(v) for k, v in sc.variants.items()}, **(
            {"sweep": sc.sweep.model_copy(update={"levels": {k: keep(v) for k, v in sc.sweep.levels.items()}})}
            if sc.sweep else {})})
    update: dict[str, Any] = {"metrics": REPORT_METRICS_BY_TYPE if sc.metrics is None else sc.metrics,
                              "overrides": absolutize_dataset_refs(list(sc.overrides), folder) + exp,
                              "variants": {k: absolutize_dataset_refs(v, folder) for k, v in sc.variants.items()}}
    if sc.sweep:
        update["sweep"] = sc.sweep.model_copy(update={"levels": {k: absolutize_dataset_refs(v, folder)
                                                                 for k, v in sc.sweep.levels.items()}})
    sc = sc.model_copy(update=update)
    base, base_cfg = load_base(path, sc.base, sc.overrides, problems)
    run_cfgs: dict[tuple, ExperimentConfig] = {}
    if base_cfg is not None:
        spec = _spec(sc, base, storage=base_cfg.run.storage_path)
        levels: list[float | None] = [None]
        if sc.sweep:  # each level once (its dataset), then every variant at the levels that load
            levels = []
            for level, over in sc.sweep.levels.items():
                level_problems: list[str] = []
                try:
                    validate(apply_overrides(base, over, level_problems), ExperimentConfig)
                except ConfigError as e:
                    level_problems += [p for p in e.problems if "unknown key" not in p]
                if level_problems:
                    problems += [f"sweep.levels.{level}: {p}" for p in level_problems]
                else:
                    levels.append(level)
        for variant in sc.variants:
            for level in levels:
                where = f"variants.{variant}" + (f" at {sc.sweep.name}={level}" if level is not None else "")
                config = {"variant": variant, "seed": sc.seeds[0], **({"level": level} if level is not None else {})}
                try:
                    run_cfgs[(variant, level)] = build_trial_config(spec, config)[0]
                except ConfigError as e:
                    problems += [f"{where}: {p}" for p in e.problems]
        problems += _check_tasks_and_metrics(sc, run_cfgs)
    if problems:
        raise ConfigError(str(path), problems)
    return Study(sc, base, base_cfg, str(path), run_cfgs)


def _variant_checks(raw: dict):
    """When the study itself is invalid, still check each variant against its base (all errors at once)."""
    def check(base: dict, _cfg, folder: Path) -> list[str]:
        problems: list[str] = []
        variants = raw.get("variants")
        for name, vo in (variants.items() if isinstance(variants, dict) else ()):
            if not isinstance(vo, list):
                continue
            vp: list[str] = []
            try:
                validate(apply_overrides(base, absolutize_dataset_refs([str(o) for o in vo], folder), vp),
                         ExperimentConfig)
            except ConfigError as e:
                vp += e.problems
            problems += [f"variants.{name}: {p}" for p in vp]
        return problems
    return check


def _check_tasks_and_metrics(sc: StudyConfig, run_cfgs: dict) -> list[str]:
    problems = check_report_metrics(sc.metrics)
    tasks = {k: tuple(c.task_names()) for k, c in run_cfgs.items()}
    if len(set(tasks.values())) > 1:
        problems.append("variants must train the same tasks (the report pairs them task by task): "
                        + "; ".join(f"{k[0]}: {list(v)}" for k, v in tasks.items()))
    return problems


# ============================================================================ running

@dataclass
class StudyOutcome:
    name: str
    experiment_path: str
    interrupted: bool
    report_files: dict | None = None
    results: Any = None
    parent_run_id: str | None = None


def study_meta(sc: StudyConfig) -> dict:
    return {"name": sc.name, "baseline": sc.baseline, "alpha": sc.alpha, "correction": sc.correction,
            "metrics": REPORT_METRICS_BY_TYPE if sc.metrics is None else sc.metrics, "variants": list(sc.variants), "seeds": list(sc.seeds),
            "sweep": sc.sweep.name if sc.sweep else None,
            "reference": sc.sweep.reference_level() if sc.sweep else None}


GRID_FILE = "study_grid.json"  # next to Tune's experiment state: what the study's runs are made of


def study_grid(study: Study) -> dict:
    """The study's design as JSON: base experiment, variants, seeds and sweep levels."""
    sc = study.config
    grid = {"base": study.base, "variants": sc.variants, "seeds": list(sc.seeds),
            "levels": sc.sweep.levels if sc.sweep else None}
    return json.loads(json.dumps(grid, sort_keys=True, default=str))


def check_same_grid(exp_path: str | Path, grid: dict, source: str) -> None:
    """Refuse to resume a study whose design changed since it started.

    Tune restores the grid it started with and skips finished runs, so new seeds would never run
    and a changed base or variant would mix two designs in one report.
    """
    path = st.join(str(exp_path), GRID_FILE)
    if not st.is_file(path):  # a new study, or one started before designs were recorded
        return
    old = json.loads(st.read_text(path))
    changed = [k for k in grid if old.get(k) != grid[k]]
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)} -> {grid[k]}" if k in ("seeds", "levels") else f"{k} changed"
                           for k in changed)
        raise ConfigError(source, [f"study '{str(exp_path).rstrip('/').rsplit('/', 1)[-1]}' already exists at {exp_path} with a different design "
                                   f"({detail}); resuming would skip or mix runs. Pass name=<new name> for a new "
                                   f"study, or delete {exp_path} to start this one over"])


def run_study(study: Study, *, tune_callbacks: list | None = None, verbose: int = 1) -> StudyOutcome:
    import ray.tune as tune

    from ple_adatt.launch.fit import storage_dir

    sc, base_cfg = study.config, study.base_cfg
    check_datasets(study.run_cfgs.values())  # every distinct dataset (sweep levels) before Ray starts
    storage = storage_dir(base_cfg)
    exp_path = st.join(storage, sc.name)
    report_dir = st.join(exp_path, "report")
    grid = study_grid(study)
    check_same_grid(exp_path, grid, study.source)
    n = cluster_concurrency(base_cfg, study.num_runs(), sc.max_concurrent)
    uri, experiment, parent = open_parent_run(
        base_cfg, storage, f"study-{sc.name}", {"study": sc.model_dump_json()},
        {KIND_TAG: STUDY_KIND, STUDY_TAG: sc.name, META_TAG: json.dumps(study_meta(sc)),
         REPORT_DIR_TAG: str(report_dir)}, experiment=sc.name)
    spec = _spec(sc, study.base, st.join(exp_path, "train"), uri, experiment, parent)

    def new_tuner(trainable):
        st.write_text(st.join(exp_path, GRID_FILE), json.dumps(grid, indent=1))
        space: dict[str, Any] = {"variant": tune.grid_search(list(sc.variants)), "seed": tune.grid_search(list(sc.seeds))}
        if sc.sweep:
            space["level"] = tune.grid_search(list(sc.sweep.levels))
        return tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=n),
                          run_config=run_config(sc.name, storage, verbose, sc.max_failures, tune_callbacks, spec=spec,
                                                metrics=["val/loss"], params=list(space)))

    results = fit_tuner(exp_path, f"study {sc.name}", spec, new_tuner)
    if len(results) < study.num_runs():  # restored a grid recorded before GRID_FILE existed
        raise ConfigError(study.source, [f"study '{sc.name}' at {exp_path} holds {len(results)} runs but this "
                                         f"command asks for {study.num_runs()}: its design changed since it started. "
                                         f"Pass name=<new name> for a new study"])
    if interrupted(results, study.num_runs(), f"study {sc.name}", "runs"):
        return StudyOutcome(sc.name, str(exp_path), True, parent_run_id=parent)
    if results.num_errors:
        print(f"[ple-adatt] study {sc.name}: {results.num_errors} run(s) failed; the report uses the others",
              flush=True)
    diagnostics = None
    if uri and parent:
        df, sweep = collect_from_mlflow(uri, parent, study_meta(sc))
        diagnostics = adatt_diagnostics_from_mlflow(uri, parent, study_meta(sc))
    else:
        df, sweep = collect_from_results(results, sc, spec)
    files = _publish_report(report_dir, df, sweep, study_meta(sc), uri, parent, diagnostics)
    return StudyOutcome(sc.name, str(exp_path), False, files, df, parent)


# ============================================================================ results + report

def collect_from_results(results, sc: StudyConfig, spec: TrialSpec):
    """The tidy results table from Tune's results (tracking off): final metrics of each run."""
    rows = []
    for r in results:
        if r.error is not None or not r.metrics:
            continue
        cfg = r.config
        task_types = json.loads(build_trial_config(spec, cfg)[1][TASK_TYPES_TAG])
        rows += metric_rows(cfg["variant"], cfg["seed"], cfg.get("level"), r.metrics, task_types, sc.metrics)
    return results_table(rows, study_meta(sc))


def _publish_report(out_dir: str | Path, df, sweep, meta: dict, uri: str | None, parent: str | None,
                    diagnostics=None) -> dict:
    """The report files (report/results.py), attached to the study's parent run, which is closed.
    A remote `out_dir` (s3://...) gets the files uploaded; the returned paths are then URIs."""
    with st.staged(str(out_dir)) as local:
        files = write_study_report(local, df, sweep, meta, diagnostics)
        close_parent_run(uri, parent, files.values(), "report")
        if st.local_path(str(out_dir)) is None:
            files = {k: st.join(str(out_dir), Path(v).relative_to(local).as_posix()) for k, v in files.items()}
    return files


def find_study_run(uri: str, name: str) -> tuple[str, dict]:
    """(parent run id, study metadata) of the most recent study run named `name` in this MLflow store."""
    run = queries.latest_run_with_tags(uri, {STUDY_TAG: name, KIND_TAG: STUDY_KIND})
    if run is None:
        raise ValueError(f"no ablation study named '{name}' in MLflow at {uri} "
                         f"(pass --tracking-uri, or --config with the study YAML)")
    tags = run.data.tags
    return run.info.run_id, {**json.loads(tags[META_TAG]), "report_dir": tags.get(REPORT_DIR_TAG)}


def regenerate_report(name: str, uri: str, out_dir: str | None = None) -> dict:
    """Rebuild a study's report from MLflow alone (no run is repeated)."""
    parent, meta = find_study_run(uri, name)
    df, sweep = collect_from_mlflow(uri, parent, meta)
    return _publish_report(out_dir or meta["report_dir"], df, sweep, meta, uri, parent,
                           adatt_diagnostics_from_mlflow(uri, parent, meta))


def load_study(path: str | Path, dataset_overrides: list[str] | None = None) -> StudyConfig:
    """The study schema only; with `dataset_overrides` the full pre-Ray validation of every variant,
    with every dataset reference of the study (sweep levels included) replaced by that dataset."""
    if dataset_overrides is None:
        return validate(read_yaml(path), StudyConfig, str(path))
    return prepare_study(path, list(dataset_overrides), replace_datasets=bool(dataset_overrides)).config
