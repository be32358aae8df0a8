"""Human-readable end-of-run summary: per-task metrics and where everything was written.

Lives with the other human-facing outputs (study reports, campaign summaries); pure formatting of a
finished run's metrics, no Ray or MLflow.
"""
from __future__ import annotations

from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.train.metrics import METRICS_BY_TYPE
from ple_adatt.train.monitor import flagged_from_metrics


def _shown(ttype: str) -> list[str]:
    """The type's metrics in registry order, then the oracle gap of its headline (first) metric."""
    return [*METRICS_BY_TYPE[ttype], f"oracle_gap_{METRICS_BY_TYPE[ttype][0]}"]


def summary_lines(cfg: ExperimentConfig, metrics: dict, prefix: str = "val/") -> list[str]:
    lines = []
    for t in cfg.task_names():
        ttype = cfg.dataset.task(t).type
        vals = [f"{m}={metrics[f'{prefix}{t}/{m}']:.4f}" for m in _shown(ttype) if f"{prefix}{t}/{m}" in metrics]
        lines.append(f"  {t:<22} {ttype:<11} " + " ".join(vals))
    avgs = sorted(k for k in metrics if k.startswith(f"{prefix}avg/"))
    if avgs:
        lines.append("  per-type averages: " + " ".join(f"{k[len(prefix) + 4:]}={metrics[k]:.4f}" for k in avgs
                                                      if not k.endswith("/n")))
    return lines


def print_summary(cfg: ExperimentConfig, result) -> None:
    print(f"\n== {cfg.name}: validation metrics after epoch {int(result.metrics.get('epoch', -1)) + 1} ==")
    print("\n".join(summary_lines(cfg, result.metrics)))
    collapsed = flagged_from_metrics(result.metrics)
    if collapsed:
        print(f"COLLAPSED tasks (validation predictions carry no signal): {', '.join(collapsed)}. "
              f"See docs/rare-tasks.md (loss=focal, pos_weight, a lower lr or more epochs).")
    if result.metrics.get("early_stopped"):
        print(f"stopped early: {cfg.train.checkpoint_metric} stopped improving (train.early_stopping)")
    print(f"checkpoint (latest): {result.checkpoint_path}")
    print(f"checkpoint (best {cfg.train.checkpoint_metric}): {result.best_checkpoint_path}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} at {result.tracking_uri}")
        print(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    if getattr(result, "model_uri", None):
        print(f"  model: mlflow.pyfunc.load_model('{result.model_uri}').predict(<parquet rows as pandas>)")
