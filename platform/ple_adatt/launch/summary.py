"""Human-readable end-of-run summary: per-task metrics and where everything was written."""
from __future__ import annotations

from ple_adatt.config.schema import ExperimentConfig

_SHOWN = ("auc", "pr_auc", "logloss", "accuracy", "macro_f1", "top3", "mae", "rmse", "r2", "oracle_gap_auc",
          "oracle_gap_accuracy", "oracle_gap_rmse")


def summary_lines(cfg: ExperimentConfig, metrics: dict, prefix: str = "val/") -> list[str]:
    lines = []
    for t in cfg.task_names():
        ttype = cfg.dataset.task(t).type
        vals = [f"{m}={metrics[f'{prefix}{t}/{m}']:.4f}" for m in _SHOWN if f"{prefix}{t}/{m}" in metrics]
        lines.append(f"  {t:<22} {ttype:<11} " + " ".join(vals))
    avgs = sorted(k for k in metrics if k.startswith(f"{prefix}avg/"))
    if avgs:
        lines.append("  per-type averages: " + " ".join(f"{k[len(prefix) + 4:]}={metrics[k]:.4f}" for k in avgs
                                                      if not k.endswith("/n")))
    return lines


def print_summary(cfg: ExperimentConfig, result) -> None:
    print(f"\n== {cfg.name}: validation metrics after epoch {int(result.metrics.get('epoch', -1)) + 1} ==")
    print("\n".join(summary_lines(cfg, result.metrics)))
    print(f"checkpoint (latest): {result.checkpoint_path}")
    print(f"checkpoint (best {cfg.train.checkpoint_metric}): {result.best_checkpoint_path}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} at {result.tracking_uri}")
        print(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}")
