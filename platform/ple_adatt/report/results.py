"""A study's tidy results table (stats.RESULT_COLUMNS + oracle_gap), from Tune results or MLflow.

    rows = metric_rows(variant, seed, level, final_metrics, task_types, report_metrics)
    df, sweep = results_table(rows, meta)            # main table at the reference level, sweep table
    df, sweep = collect_from_mlflow(uri, parent_run_id, meta)
    files = write_study_report(out_dir, df, sweep, meta, diagnostics)

`meta` is the study metadata launch/ablate.py stores on the study's MLflow parent run (name,
baseline, alpha, correction, metrics, variants, seeds, sweep, reference). MLflow is read through
tracking/queries.py only.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ple_adatt.tracking import queries


def metric_rows(variant: str, seed: int, level: float | None, metrics: dict, task_types: dict[str, str],
                report_metrics: dict[str, list[str]]) -> list[dict]:
    """Final per-task metrics of one run -> tidy rows (report contract); non-finite values dropped."""
    rows = []
    for task, ttype in task_types.items():
        for m in report_metrics.get(ttype, []):
            v = metrics.get(f"val/{task}/{m}")
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            gap = metrics.get(f"val/{task}/oracle_gap_{m}")
            rows.append({"variant": variant, "seed": int(seed), "task": task, "task_type": ttype, "metric": m,
                         "value": float(v), "oracle_gap": float(gap) if isinstance(gap, (int, float)) else math.nan,
                         "level": level,
                         # train/monitor.py's flag: this run's validation predictions for the task had no signal
                         "collapsed": bool(metrics.get(f"val/{task}/collapsed", 0.0))})
    return rows


def results_table(rows: list[dict], meta: dict):
    """Rows -> (main table, sweep table or None): variants in study order; with a sweep, the main
    table holds the reference level's runs and the sweep table every level (column `correlation`)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError(f"study {meta['name']}: no finished runs with metrics to report")
    df = df.sort_values(["variant", "seed", "task", "metric"]).reset_index(drop=True)
    order = [v for v in meta["variants"] if v in set(df["variant"])]
    df["variant"] = pd.Categorical(df["variant"], order, ordered=True)
    df = df.sort_values(["variant", "seed"]).reset_index(drop=True)
    df["variant"] = df["variant"].astype(str)
    if meta.get("sweep"):
        sweep = df.rename(columns={"level": "correlation"})[
            ["variant", "correlation", "seed", "task", "task_type", "metric", "value"]]
        main = df[df["level"] == meta["reference"]].drop(columns=["level"])
        return main.reset_index(drop=True), sweep
    return df.drop(columns=["level"]), None


def collect_from_mlflow(uri: str, parent_run_id: str, meta: dict):
    """Rebuild the tidy table from the study's finished MLflow child runs (final-epoch metrics)."""
    rows, seen = [], set()
    level_name = meta.get("sweep")
    for run in queries.finished_child_runs(uri, parent_run_id):
        tags = run.data.tags
        if "variant" not in tags or "seed" not in tags or tags["variant"] not in meta["variants"]:
            continue
        level = float(tags[level_name]) if level_name and level_name in tags else None
        key = (tags["variant"], int(tags["seed"]), level)
        if key in seen:
            continue
        seen.add(key)
        rows += metric_rows(key[0], key[1], level, run.data.metrics,
                            json.loads(tags.get(queries.TASK_TYPES_TAG, "{}")), meta["metrics"])
    return results_table(rows, meta)


def adatt_diagnostics_from_mlflow(uri: str, parent_run_id: str, meta: dict):
    """adaTT diagnostics of the study's runs: per-epoch transfer entropy (metric history) and each
    variant's final-epoch affinity (artifact adatt/affinity_final.json, averaged over seeds)."""
    import numpy as np
    import pandas as pd

    from ple_adatt.report.render import AdattDiagnostics

    rows, mats = [], {}
    for run in queries.finished_child_runs(uri, parent_run_id):
        tags = run.data.tags
        if "variant" not in tags or "adatt/transfer_entropy" not in run.data.metrics:
            continue
        for step, value in queries.metric_history(uri, run.info.run_id, "adatt/transfer_entropy"):
            rows.append({"variant": tags["variant"], "seed": int(tags["seed"]), "epoch": step,
                         "transfer_entropy": value})
        snap = queries.json_artifact(uri, run.info.run_id, "adatt/affinity_final.json")
        if snap is None:  # a run without the artifact just has no heatmap
            continue
        mats.setdefault(tags["variant"], []).append((np.asarray(snap["matrix"]), snap["tasks"]))
    if not rows and not mats:
        return None
    affinity = {v: (np.mean([m for m, _ in ms], axis=0), ms[0][1]) for v, ms in mats.items()}
    return AdattDiagnostics(entropy=pd.DataFrame(rows) if rows else None, affinity=affinity)


def write_study_report(out_dir: Path, df, sweep, meta: dict, diagnostics=None) -> dict:
    """report.md/.html + figures (render.write_report) and results.csv; -> {file name: path}."""
    from ple_adatt.report.render import write_report
    from ple_adatt.report.stats import StudyMeta

    smeta = StudyMeta(name=meta["name"], baseline=meta["baseline"], alpha=meta["alpha"], correction=meta["correction"])
    files = write_report(out_dir, df, smeta, diagnostics=diagnostics, sweep=sweep)
    df.to_csv(Path(out_dir) / "results.csv", index=False)
    files["results.csv"] = Path(out_dir) / "results.csv"
    print(f"[ple-adatt] report: {Path(out_dir) / 'report.md'} and report.html", flush=True)
    return files
