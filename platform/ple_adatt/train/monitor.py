"""What the loop watches after each validation pass, as pure functions: collapsed tasks and early
stopping. Rank 0 computes both from its gathered predictions / metric history; the loop shares the
stop decision so every rank leaves at the same epoch.

A task is flagged **collapsed** when its validation predictions barely vary or carry no ranking:

- spread below ``SPREAD_MIN``: binary, the std of the logits; multiclass/contrastive, the mean over
  classes of the std of the log-probabilities; regression, the std of the predictions in standard
  units of the train target (a fraction of the label's std). 0.05 is far below a model that learned
  anything (the issue-17 collapse had a logit std of 0.007) and scale-free across base rates;
- binary AUC within ``AUC_BAND`` (0.02) of 0.5.
"""
from __future__ import annotations

import math

import numpy as np

SPREAD_MIN = 0.05
"""Prediction spread (see the module docstring) under which a task is flagged collapsed."""
AUC_BAND = 0.02
"""A binary task whose validation AUC is within this of 0.5 is flagged collapsed."""


def prediction_spread(task_type: str, logits: np.ndarray) -> float:
    """Spread of one task's validation outputs (model units: logits, standardised regression)."""
    z = np.asarray(logits, np.float64)
    if len(z) < 2:
        return math.nan
    if task_type in ("multiclass", "contrastive"):
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        return float(logp.std(0).mean())
    return float(z.std())


def prediction_spreads(task_types: dict[str, str], preds: dict) -> dict[str, float]:
    """{"<task>/spread": value} over the labelled rows of train/evaluate.py's predictions."""
    out = {}
    for t, ttype in task_types.items():
        if t in preds:
            mask = preds[t]["mask"].astype(bool)
            out[f"{t}/spread"] = prediction_spread(ttype, preds[t]["logits"][mask])
    return out


def collapsed_tasks(task_types: dict[str, str], metrics: dict, prefix: str = "val/",
                    spread_min: float = SPREAD_MIN, auc_band: float = AUC_BAND) -> dict[str, str]:
    """{task: reason} for every task flagged collapsed, from `<prefix><task>/spread` and `/auc`."""
    out = {}
    for t, ttype in task_types.items():
        reasons = []
        spread = metrics.get(f"{prefix}{t}/spread")
        if spread is not None and math.isfinite(spread) and spread < spread_min:
            reasons.append(f"spread {spread:.2g} < {spread_min:g}")
        auc = metrics.get(f"{prefix}{t}/auc")
        if ttype == "binary" and auc is not None and math.isfinite(auc) and abs(auc - 0.5) < auc_band:
            reasons.append(f"auc {auc:.3f} within {auc_band:g} of 0.5")
        if reasons:
            out[t] = ", ".join(reasons)
    return out


def collapse_flags(task_types: dict[str, str], metrics: dict, prefix: str = "val/") -> dict[str, float]:
    """{"<prefix><task>/collapsed": 1.0 or 0.0} for every task: the flag as a metric (MLflow, results rows)."""
    flagged = collapsed_tasks(task_types, metrics, prefix)
    return {f"{prefix}{t}/collapsed": float(t in flagged) for t in task_types}


def flagged_from_metrics(metrics: dict, prefix: str = "val/") -> list[str]:
    """Tasks whose `<prefix><task>/collapsed` flag is set (for summaries, tags and reports)."""
    return sorted(k[len(prefix):-len("/collapsed")] for k, v in metrics.items()
                  if k.startswith(prefix) and k.endswith("/collapsed") and v)


def should_stop(history: list[dict], metric: str, mode: str, patience: int, min_delta: float = 0.0) -> bool:
    """Early stopping: True when the last ``patience`` epochs of ``history`` did not improve ``metric``
    by more than ``min_delta`` over the best value before them (``mode``: "min" or "max"). Epochs
    without the metric (or with a non-finite value) never count as improvements."""
    values = [h.get(metric) for h in history]
    values = [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]
    if len(values) <= patience:
        return False
    before, recent = values[:-patience], values[-patience:]
    seen = [v for v in before if v is not None]
    if not seen:
        return False
    best = min(seen) if mode == "min" else max(seen)
    improved = [v for v in recent if v is not None and (v < best - min_delta if mode == "min" else v > best + min_delta)]
    return not improved


def shared_decision(decision: bool, world: int) -> bool:
    """Rank 0's decision on every rank (a broadcast; other ranks' ``decision`` is ignored), so all
    ranks stop at the same epoch and no collective is left waiting. One process: ``decision``."""
    if world == 1:
        return decision
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if decision else 0.0], dtype=torch.float64)
    dist.broadcast(flag, src=0)
    return bool(flag.item() > 0)
