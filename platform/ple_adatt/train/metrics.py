"""Per-task evaluation metrics and per-type averages (never averaged across task types).

Input per task: logits (numpy; [N] or [N, C]), labels [N], mask [N] bool, optional oracle.
Names: `<task>/<metric>`, `avg/<type>/<metric>`, `<task>/oracle_<metric>`, `<task>/oracle_gap_<metric>`.
Oracle gaps have one sign for every metric: positive = the model is worse than the oracle
(oracle - model for higher-is-better metrics, model - oracle for lower-is-better ones), so a smaller
gap is always better.

The one metric registry: METRICS_BY_TYPE (names per task type, display order), HIGHER_IS_BETTER
(direction per name) and metric_mode ("max"/"min" of a full reported name); campaigns, studies,
reports and the console summary all read it from here.
"""
from __future__ import annotations

import math
import re

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, log_loss, roc_auc_score

# The one metric registry (tests/unit/test_metrics.py checks it against `evaluate_predictions`).
METRICS_BY_TYPE = {"binary": ("auc", "pr_auc", "logloss"),
                   "multiclass": ("accuracy", "macro_f1", "top3", "logloss"),
                   "regression": ("mae", "rmse", "r2"),
                   "contrastive": ("accuracy", "macro_f1", "top3", "logloss")}
"""Per-task metrics `task_metrics` reports for each task type, in display order."""
REPORT_METRICS_BY_TYPE = {"binary": ["auc", "pr_auc"], "multiclass": ["accuracy", "macro_f1"],
                          "regression": ["mae", "rmse"], "contrastive": ["accuracy"]}
"""What an ablation report compares per task type unless the study says otherwise (few = less
multiple-testing cost); a subset of METRICS_BY_TYPE (a test checks)."""
HIGHER_IS_BETTER = {"auc": True, "pr_auc": True, "logloss": False, "accuracy": True, "macro_f1": True,
                    "top3": True, "mae": False, "rmse": False, "r2": True, "loss": False,
                    # not computed here, but accepted in study results tables built elsewhere
                    "f1_macro": True, "mrr": True, "map": True, "mse": False, "brier": False}
"""Metric name (last segment, without `oracle_` / `oracle_gap_`) -> whether higher is better."""
TOP_K = re.compile(r"^(top|ndcg|recall|hit|hitrate|precision)[_@]?(\d+|k)$")
"""Ranking metrics (top3, ndcg@5, recall@10, ...): higher is better."""


def higher_is_better(metric: str) -> bool:
    """Direction of a bare metric name (`auc`, `rmse`, `top3`); ValueError names the known ones."""
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    if TOP_K.match(metric):
        return True
    raise ValueError(f"unknown metric direction for {metric!r}: expected one of {sorted(HIGHER_IS_BETTER)} "
                     f"or a top-k name like 'top3'/'ndcg@5'")


def metric_mode(name: str) -> str:
    """Tune/Optuna mode ("max" or "min") of a reported metric name: `val/avg/binary/auc`,
    `val/<task>/rmse`, `val/loss`, `<task>/oracle_auc`. Oracle gaps (positive = the model is worse)
    are always "min"."""
    last = name.rsplit("/", 1)[-1]
    if last.startswith("oracle_gap_"):
        higher_is_better(last[len("oracle_gap_"):])  # an unknown metric still raises
        return "min"
    if last.startswith("oracle_"):
        last = last[len("oracle_"):]
    return "max" if higher_is_better(last) else "min"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def binary_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(np.unique(y)) < 2:  # AUC undefined with one class; report NaN rather than a fake value
        return {"auc": math.nan, "pr_auc": math.nan, "logloss": float(log_loss(y, p, labels=[0, 1]))}
    return {"auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
            "logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))}


def multiclass_metrics(prob: np.ndarray, y: np.ndarray, k: int = 3) -> dict[str, float]:
    c = prob.shape[1]
    top = np.argsort(-prob, axis=1)[:, : min(k, c)]
    return {
        "accuracy": float((prob.argmax(1) == y).mean()),
        "macro_f1": float(f1_score(y, prob.argmax(1), average="macro", labels=np.arange(c), zero_division=0)),
        f"top{k}": float((top == y[:, None]).any(1).mean()),
        "logloss": float(log_loss(y, np.clip(prob, 1e-7, 1.0), labels=np.arange(c))),
    }


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred - y
    var = float(np.var(y))
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "r2": float(1 - (err**2).mean() / var) if var > 0 else math.nan}


def oracle_gap(metric: str, model: float, oracle: float) -> float:
    """How much worse the model is than the oracle on ``metric`` (positive = worse, for every metric)."""
    return oracle - model if higher_is_better(metric) else model - oracle


def task_metrics(task_type: str, logits: np.ndarray, y: np.ndarray, oracle: np.ndarray | None = None) -> dict[str, float]:
    """Metrics for one task on labelled rows; with `oracle`, the oracle's metrics and the gaps."""
    if task_type == "binary":
        m = binary_metrics(sigmoid(logits), y)
        o = binary_metrics(np.clip(oracle, 1e-7, 1 - 1e-7), y) if oracle is not None else None
    elif task_type in ("multiclass", "contrastive"):
        m = multiclass_metrics(softmax(logits), y.astype(np.int64))
        o = multiclass_metrics(oracle, y.astype(np.int64)) if oracle is not None else None
    else:
        m = regression_metrics(logits, y)
        o = regression_metrics(oracle, y) if oracle is not None else None
    return with_oracle(m, o)


def with_oracle(m: dict[str, float], o: dict[str, float] | None) -> dict[str, float]:
    """The model's metrics plus, with the oracle's, `oracle_<k>` and `oracle_gap_<k>` (one home for
    the gap's definition: the exact and the streaming paths both call it)."""
    if o is not None:
        for k, v in o.items():
            m[f"oracle_{k}"] = v
            m[f"oracle_gap_{k}"] = oracle_gap(k, m[k], v)
    return m


def evaluate_predictions(task_types: dict[str, str], preds: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """preds[task] = {"logits", "label", "mask", optional "oracle"} -> flat metric dict."""
    per_task: dict[str, tuple[float, dict[str, float]]] = {}
    for task, ttype in task_types.items():
        p = preds[task]
        mask = p["mask"].astype(bool)
        if not mask.any():
            continue
        oracle = p.get("oracle")
        if oracle is not None:
            oracle = oracle[mask]
            if np.isnan(oracle).any():
                oracle = None
        per_task[task] = (float(mask.sum()), task_metrics(ttype, p["logits"][mask], p["label"][mask], oracle))
    return flat_metrics(task_types, per_task)


def flat_metrics(task_types: dict[str, str], per_task: dict[str, tuple[float, dict[str, float]]]) -> dict[str, float]:
    """{task: (labelled rows, task_metrics)} -> `<task>/n`, `<task>/<metric>` and the per-type means
    `avg/<type>/<metric>` (NaN and oracle entries left out of the means)."""
    out: dict[str, float] = {}
    per_type: dict[str, dict[str, list[float]]] = {}
    for task, (n, m) in per_task.items():
        ttype = task_types[task]
        out[f"{task}/n"] = n
        for k, v in m.items():
            out[f"{task}/{k}"] = v
            if not k.startswith("oracle") and not math.isnan(v):
                per_type.setdefault(ttype, {}).setdefault(k, []).append(v)
    for ttype, metrics in per_type.items():
        for k, vals in metrics.items():
            out[f"avg/{ttype}/{k}"] = float(np.mean(vals))
    return out


def reported_metric_names(cfg) -> list[str]:
    """Every metric name the training loop reports per epoch that can rank checkpoints (validation
    metrics and the training losses), for this config's tasks: what `train.checkpoint_metric`
    may name. Mirrors train/loop.py [4] (`val/` + validation_loss + evaluate_predictions)."""
    names = ["val/loss", "train/loss"]
    per_type: dict[str, list[str]] = {}
    for t in cfg.task_names():
        task = cfg.dataset.task(t)
        metrics = list(METRICS_BY_TYPE[task.type])
        names += [f"val/{t}/loss", f"train/{t}/loss", f"val/{t}/n"] + [f"val/{t}/{m}" for m in metrics]
        if task.oracle:
            names += [f"val/{t}/oracle_{m}" for m in metrics] + [f"val/{t}/oracle_gap_{m}" for m in metrics]
        per_type.setdefault(task.type, metrics)
    names += [f"val/avg/{ty}/{m}" for ty, ms in per_type.items() for m in ms]
    return names


def check_checkpoint_metric(cfg) -> None:
    """ValueError naming `train.checkpoint_metric` and its close matches when the run will never
    report it (Ray would fail after the first epoch with `Invalid metric name`)."""
    import difflib

    names = reported_metric_names(cfg)
    want = cfg.train.checkpoint_metric
    if want not in names:
        close = difflib.get_close_matches(want, names, n=5, cutoff=0.6)
        raise ValueError(f"train.checkpoint_metric={want!r} is not a metric this config reports; "
                         f"{'close matches: ' + ', '.join(close) if close else 'e.g. ' + ', '.join(names[:6])}")


# ---- Streaming forms (validation without holding the split; docs/streaming-metrics.md) -------------
SCORE_BINS = 1 << 14
"""Histogram bins for AUC / PR-AUC: uniform on the logit scale over [-SCORE_RANGE, SCORE_RANGE]."""
SCORE_RANGE = 16.0
"""Half-width of the binned logit range; scores beyond it share the end bins (the error bound counts
them: ties in a bin are what the bound is made of). 16 ~ logit(1 - 1e-7), the oracle clip."""


def score_bins(logits: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Logits [N] -> bin index [N] in [0, bins): monotone, so ranks are kept up to ties within a bin."""
    width = 2 * SCORE_RANGE / bins
    idx = np.floor((np.nan_to_num(logits, nan=0.0) + SCORE_RANGE) / width)
    return np.clip(idx, 0, bins - 1).astype(np.int64)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def histogram_auc(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float, float]:
    """(AUC, PR-AUC, bound on |AUC - exact|, bound on |PR-AUC - exact|) from per-bin positive and
    negative counts [bins] (ascending score). Rows in one bin count as tied, as sklearn counts tied
    scores: AUC gives a tied (positive, negative) pair 1/2, average precision takes one threshold
    per bin. Only pairs inside a bin can differ from the exact ranking, hence the bounds:
    AUC: 1/2 Σ_b pos_b neg_b / (P N); PR-AUC: Σ_b pos_b/P × (largest - smallest precision any
    positive of bin b could have had at its exact threshold)."""
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    p_tot, n_tot = pos.sum(), neg.sum()
    if p_tot == 0 or n_tot == 0:
        return math.nan, math.nan, 0.0, 0.0
    neg_below = np.cumsum(neg) - neg
    auc = float((pos * (neg_below + 0.5 * neg)).sum() / (p_tot * n_tot))
    auc_bound = float(0.5 * (pos * neg).sum() / (p_tot * n_tot))
    # descending score: true/false positives before each bin (tp0, fp0) and after it (tp, fp)
    pos_d, neg_d = pos[::-1], neg[::-1]
    tp, fp = np.cumsum(pos_d), np.cumsum(neg_d)
    tp0, fp0 = tp - pos_d, fp - neg_d
    has = pos_d > 0
    prec = tp[has] / (tp[has] + fp[has])
    ap = float((pos_d[has] / p_tot * prec).sum())
    hi = tp[has] / (tp[has] + fp0[has])
    lo = (tp0[has] + 1) / (tp0[has] + 1 + fp[has])
    ap_bound = float((pos_d[has] / p_tot * (hi - lo)).sum())
    return auc, ap, auc_bound, ap_bound
