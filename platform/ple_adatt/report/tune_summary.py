"""The summary of a finished tuning campaign: trials table, Optuna study, plots, best config(s).

    summary = write_summary(campaign, result_grid, exp_path / "summary")

Writes trials.csv, importances.csv, optuna.db (every trial, for optuna-dashboard), the Optuna
plots, best_config.yaml (a ready-to-run experiment), for multi-objective campaigns pareto.csv and
pareto/<trial>.yaml, and summary.md listing all of it. No Ray, no MLflow: launch/tune.py attaches
the files to the campaign's MLflow run.

`campaign` is a launch.tune.Campaign, read through its attributes (config, base, base_cfg, metrics,
modes) and its Optuna encoding (decode, encode, distributions), because report sits below launch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ple_adatt.config.loading import config_to_yaml, validate
from ple_adatt.config.paths import apply_values, set_path
from ple_adatt.config.schema import ExperimentConfig

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TuneSummary:
    trials: Any
    """pandas DataFrame: one row per trial, sorted by the objective."""
    summary_dir: str
    best_config_path: str | None = None
    best: Any = None
    """The best trial's row (pandas Series), None when no trial finished with a finite objective."""
    pareto: Any = None
    """Pareto-optimal rows (multi-objective campaigns only)."""
    files: list[str] | None = None
    """Names of the files written to summary_dir."""


def trial_epochs(last_result: dict | None, history=None) -> int:
    """Epochs a trial's Train run has trained: 1 + the highest `epoch` it reported (its Train run
    resumes from its own checkpoints, so after a campaign is restored Tune's `training_iteration`
    restarts at 1 while `epoch` keeps counting); `history` is Tune's per-result table if at hand."""
    seen = [int(v) + 1 for v in ([] if history is None or "epoch" not in history else history["epoch"])
            if v == v]  # skip NaN
    if last_result and isinstance(last_result.get("epoch"), (int, float)):
        seen.append(int(last_result["epoch"]) + 1)
    if seen:
        return max(seen)
    return int((last_result or {}).get("training_iteration", 0) or 0)


def trial_status(error: bool, epochs: int, max_t: int | None) -> str:
    """A trial's outcome: error, completed (reached max_t; always, without a scheduler) or early_stopped."""
    if error:
        return "error"
    return "completed" if max_t is None or epochs >= max_t else "early_stopped"


def trials_table(campaign, results) -> pd.DataFrame:
    """One row per trial: trial_id, status, epochs, objective value(s), params; sorted by objective."""
    import pandas as pd

    cc = campaign.config
    max_t = (cc.scheduler.max_t if cc.scheduler and cc.scheduler.max_t else campaign.base_cfg.train.epochs)
    rows = []
    for order, r in enumerate(results):  # the ResultGrid lists trials in creation order
        m = r.metrics or {}
        hist = r.metrics_dataframe
        # From the trial's whole result history, not Tune's restored counters (issue 18 item 5):
        # after a kill and relaunch a trial's training_iteration restarts while its epochs do not.
        epochs = trial_epochs(m, hist)
        status = trial_status(r.error is not None, epochs, max_t)
        row = {"trial_id": m.get("trial_id") or Path(r.path).name, "status": status, "epochs": epochs, "_order": order}
        for metric in campaign.metrics:
            v = m.get(metric)
            row[metric] = float(v) if isinstance(v, (int, float)) else math.nan
        step = "epoch" if hist is not None and "epoch" in hist else "training_iteration"
        row["_history"] = ({int(i) + (step == "epoch"): float(v) for i, v in zip(hist[step], hist[campaign.metrics[0]])
                            if isinstance(v, (int, float)) and math.isfinite(v) and i == i}
                           if hist is not None and campaign.metrics[0] in hist else {})
        for k, v in (r.config or {}).items():
            row[f"param:{k}"] = campaign.decode(v)
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


def best_config_yaml(campaign, values: dict[str, Any], run_name: str, header: list[str]) -> str:
    """A ready-to-run, self-contained experiment YAML (validated before it is returned)."""
    data = set_path(apply_values(campaign.base, values), "run.name", run_name)
    cfg = validate(data, ExperimentConfig, f"best config of {campaign.config.name}")
    return "\n".join(f"# {h}" for h in header) + "\n" + config_to_yaml(cfg)


def export_optuna_study(campaign, df, db_path: Path):
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
            params={k: campaign.encode(v) for k, v in params.items()},
            distributions=campaign.distributions(params), values=vals, state=state,
            intermediate_values=row["_history"] if len(metrics) == 1 else None,
            user_attrs={"tune_trial_id": row["trial_id"], "status": row["status"]}))
    return study


def _plots(study, campaign, out: Path) -> tuple[list[str], list[str]]:
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


def write_summary(campaign, results, out: Path) -> TuneSummary:
    """Write every summary file of a finished campaign to `out` (re-written on resume)."""
    import optuna

    cc = campaign.config
    metrics, modes = campaign.metrics, campaign.modes
    out = Path(out)
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
             "- objective: " + ", ".join(f"{m} ({mo})" for m, mo in zip(metrics, modes)),
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
    print(f"[ple-adatt] campaign {cc.name}: {len(df)} trials; summary in {out}"
          + (f"; best config {best_path}" if best_path else ""), flush=True)
    return TuneSummary(df, str(out), str(best_path) if best_path else None,
                       best if best_path is not None else None, pareto, files)
