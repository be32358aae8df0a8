"""Calibration of predictions and of the evidential uncertainty (model.evidential), numpy only.

Input per task: the prediction dict of train/evaluate.py ({"logits", "label", "mask"} plus, with an
evidential head, "u" [N] and "evi_prob" [N, C] or "evi_mu/v/alpha/beta" [N]).

Names (no `val/` prefix; evaluate and the training loop add theirs):
    <task>/ece          expected calibration error of the tower's probabilities (classification)
    <task>/evi_ece      the same for the evidential head's p̂ = α/S
    <task>/u_mean       mean evidential uncertainty over labelled rows
    <task>/coverage     share of labels inside the NIG predictive interval of nominal level `interval`
    <task>/interval_width  its mean width (regression)
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from ple_adatt.train.metrics import sigmoid, softmax


def ece_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Confidence [N] in [0, 1] -> equal-width bin index [N] (conf = 1.0 falls into the last bin)."""
    return np.minimum((np.asarray(confidence, float) * bins).astype(int), bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over equal-width confidence bins.

    confidence [N] in [0, 1]: the probability of the predicted class; correct [N] bool/0-1."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if confidence.size == 0:
        return float("nan")
    idx = ece_bins(confidence, bins)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def classification_ece(prob: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: prob [N] (binary, P(y=1)) or [N, C]; y [N] integer labels."""
    if prob.ndim == 1:
        prob = np.stack([1 - prob, prob], axis=1)
    pred = prob.argmax(1)
    return expected_calibration_error(prob.max(1), pred == y.astype(np.int64), bins)


def nig_interval(mu, v, alpha, beta, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` interval of the NIG posterior predictive, a Student-t with 2α degrees of
    freedom, location μ and scale² = β(1 + v)/(v α) (Amini et al., 2020) -> (low [N], high [N])."""
    scale = np.sqrt(beta * (1 + v) / (v * alpha))
    half = stats.t.ppf(0.5 + level / 2, df=2 * alpha) * scale
    return mu - half, mu + half


def calibration_metrics(task_types: dict[str, str], preds: dict[str, dict[str, np.ndarray]],
                        interval: float = 0.9) -> dict[str, float]:
    """ECE per classification task (tower, and evidential head when present), the evidential
    uncertainty's mean, and the regression interval's coverage and width; labelled rows only."""
    out: dict[str, float] = {}
    for task, ttype in task_types.items():
        p = preds.get(task)
        if p is None:
            continue
        mask = p["mask"].astype(bool)
        if not mask.any():
            continue
        y = p["label"][mask]
        if ttype in ("binary", "multiclass"):
            z = p["logits"][mask]
            out[f"{task}/ece"] = classification_ece(sigmoid(z) if ttype == "binary" else softmax(z), y)
            if "evi_prob" in p:
                out[f"{task}/evi_ece"] = classification_ece(p["evi_prob"][mask], y)
        if "u" in p:
            out[f"{task}/u_mean"] = float(np.mean(p["u"][mask]))
        if ttype == "regression" and "evi_mu" in p:
            lo, hi = nig_interval(*(p[f"evi_{k}"][mask].astype(float) for k in ("mu", "v", "alpha", "beta")), interval)
            out[f"{task}/coverage"] = float(((y >= lo) & (y <= hi)).mean())
            out[f"{task}/interval_width"] = float(np.mean(hi - lo))
    return out
