"""Label statistics of the train split and the scale the model sees its targets on.

`LabelStats` accumulates the label columns of the train split batch by batch, inside
`fit_preprocessing`'s one streaming scan (bounded memory), and returns, per task, what `PreprocessState.targets` stores (plain JSON, saved in every checkpoint):

    binary       {"type": "binary", "n": rows, "rate": P(y=1)}
    multiclass   {"type": "multiclass", "n": rows, "prior": [P(y=c) for c in range(C)]}
    regression   {"type": "regression", "n": rows, "mean": m, "std": s}
    contrastive  {"type": "contrastive", "n": rows}

Regression labels are standardised with (mean, std) when packed (so the loss and its parameters,
Huber's delta included, are in standard units) and predictions are mapped back with
`to_original_units` before any metric or prediction file sees them. Every task's output bias starts
at its prior (`output_bias`): log-odds, centred log-priors, 0 for a standardised regression.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ple_adatt.config.dataset import DatasetSpec

PRIOR_FLOOR = 1e-4
"""Smallest rate/class prior used for a bias (a class absent from train would give -inf)."""


class LabelStats:
    """Streaming accumulator of the train split's label statistics: `add` each record batch (it
    must hold every task's label column), then `result()` -> {task: stats} (the module docstring's
    format). Lets `fit_preprocessing` read labels in the same scan as the features."""

    def __init__(self, spec: DatasetSpec):
        self.tasks = list(spec.tasks)
        self.columns = list(dict.fromkeys(t.label for t in self.tasks))
        self.acc: dict[str, dict] = {t.name: {"n": 0, "s": 0.0, "ss": 0.0, "counts": np.zeros(t.num_classes or 2)}
                                     for t in self.tasks}

    def add(self, batch: pa.RecordBatch) -> None:
        for t in self.tasks:
            col = batch.column(t.label)
            col = col.filter(pc.invert(pc.is_null(col)))
            if t.type in ("multiclass", "contrastive"):
                y = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
                y = y[(y >= 0) & (y < t.num_classes)]
                self.acc[t.name]["counts"] += np.bincount(y, minlength=t.num_classes)[: t.num_classes]
                self.acc[t.name]["n"] += len(y)
                continue
            y = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            y = y[np.isfinite(y)]
            if t.type == "regression" and len(y):
                # shifted sums: the first batch's mean as the shift keeps the variance exact for large means
                shift = self.acc[t.name].setdefault("shift", float(y.mean()))
                y = y - shift
            self.acc[t.name]["n"] += len(y)
            self.acc[t.name]["s"] += float(y.sum())
            self.acc[t.name]["ss"] += float((y * y).sum())

    def result(self) -> dict[str, dict]:
        acc = self.acc
        out = {}
        for t in self.tasks:
            a, n = acc[t.name], acc[t.name]["n"]
            if t.type == "binary":
                out[t.name] = {"type": "binary", "n": n, "rate": a["s"] / n if n else math.nan}
            elif t.type == "multiclass":
                out[t.name] = {"type": "multiclass", "n": n, "prior": (a["counts"] / max(n, 1)).tolist()}
            elif t.type == "regression":
                mean = a["s"] / n if n else 0.0
                var = max(a["ss"] / n - mean**2, 0.0) if n else 1.0
                std = math.sqrt(var)
                out[t.name] = {"type": "regression", "n": n, "mean": mean + a.get("shift", 0.0),
                               "std": std if std > 1e-12 else 1.0}  # a constant target passes through centred
            else:
                out[t.name] = {"type": "contrastive", "n": n}
        return out


def standardise_label(stats: dict | None, y: np.ndarray) -> np.ndarray:
    """Regression labels -> (y - mean) / std (float32); other tasks (or no stats) unchanged."""
    if not stats or stats.get("type") != "regression":
        return y
    return ((y.astype(np.float64) - stats["mean"]) / stats["std"]).astype(np.float32)


def original_units(stats: dict | None, z: np.ndarray) -> np.ndarray:
    """Standardised regression outputs (or labels) -> original units; other tasks unchanged."""
    if not stats or stats.get("type") != "regression":
        return z
    return (z.astype(np.float64) * stats["std"] + stats["mean"]).astype(np.float32)


def to_original_units(preds: dict, targets: dict[str, dict]) -> dict:
    """train/evaluate.py's {task: {"logits", "label", "mask"[, "oracle"]}} with regression logits and
    labels mapped back to original units (oracles are stored in original units already)."""
    out = {}
    for t, p in preds.items():
        stats = targets.get(t)
        out[t] = {**p, "logits": original_units(stats, p["logits"]), "label": original_units(stats, p["label"])} \
            if stats and stats.get("type") == "regression" else p
    return out


def output_bias(stats: dict | None, out_dim: int) -> np.ndarray | None:
    """The prior output bias of a task head: [1] log-odds (binary), [C] centred log-priors
    (multiclass), [1] zero (standardised regression); None when there is nothing to set
    (contrastive, or no labelled train rows)."""
    if not stats or not stats.get("n"):
        return None
    kind = stats["type"]
    if kind == "binary":
        p = min(max(stats["rate"], PRIOR_FLOOR), 1 - PRIOR_FLOOR)
        return np.full(out_dim, math.log(p / (1 - p)))
    if kind == "multiclass":
        logp = np.log(np.maximum(np.asarray(stats["prior"], np.float64), PRIOR_FLOOR))
        return logp - logp.mean()
    if kind == "regression":
        return np.zeros(out_dim)
    return None


def rare_task_advice(targets: dict[str, dict], losses: dict[str, str], pos_weights: dict[str, float | None],
                     threshold: float = 0.05) -> list[str]:
    """One line per binary task whose train base rate is under ``threshold`` (or over 1 - threshold),
    with the option that fits it. ``losses``: task -> configured loss name."""
    lines = []
    for t, s in targets.items():
        if s.get("type") != "binary" or not s.get("n") or t not in losses:
            continue
        rate = s["rate"]
        minority = min(rate, 1 - rate)
        if minority >= threshold:
            continue
        which = "positives" if rate < 0.5 else "negatives"
        if losses[t] == "focal" or pos_weights.get(t):
            lines.append(f"task '{t}': {which} are {minority:.2%} of train rows; handled with "
                         f"{'loss=focal' if losses[t] == 'focal' else f'pos_weight={pos_weights[t]:g}'}")
        else:
            pw = (1 - rate) / max(rate, PRIOR_FLOOR)
            lines.append(f"task '{t}': {which} are {minority:.2%} of train rows (rare). The output bias starts "
                         f"at the prior; if it collapses, set tasks.{t}.loss=focal or tasks.{t}.pos_weight="
                         f"{pw:.3g} (docs/rare-tasks.md)")
    return lines
