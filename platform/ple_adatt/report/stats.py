"""Statistics for ablation studies: CIs over seeds, seed-matched paired tests, corrections.

Everything works on a tidy results table, one row per (variant, seed, task, metric):

    variant: str   seed: int   task: str   task_type: binary|multiclass|regression|contrastive
    metric: str    value: float            oracle_gap: float (optional, NaN where absent)

Differences are always ``variant - baseline`` in the metric's own units; whether a
difference is *better* depends on the metric direction (``metric_direction``).
Seeds are the unit of replication: a comparison pairs the same seed of two variants,
so seed-to-seed spread (data order, init) cancels out of the difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ple_adatt.train.metrics import METRICS_BY_TYPE, TOP_K, higher_is_better

RESULT_COLUMNS = ("variant", "seed", "task", "task_type", "metric", "value")
TASK_TYPES = tuple(METRICS_BY_TYPE)
CORRECTIONS = {"holm": "Holm–Bonferroni", "bh": "Benjamini–Hochberg"}
WILCOXON_MIN_N = 6  # below this the signed-rank test cannot reach p < 0.05 two-sided
METRIC_RANGES = {"auc": (0.0, 1.0), "pr_auc": (0.0, 1.0), "logloss": (0.0, math.inf),
                 "accuracy": (0.0, 1.0), "macro_f1": (0.0, 1.0), "top3": (0.0, 1.0),
                 "mae": (0.0, math.inf), "rmse": (0.0, math.inf), "r2": (-math.inf, 1.0),
                 "loss": (0.0, math.inf), "f1_macro": (0.0, 1.0), "mrr": (0.0, 1.0), "map": (0.0, 1.0),
                 "mse": (0.0, math.inf), "brier": (0.0, 1.0)}
"""Metric name -> (lowest, highest) value it can take; a t-interval over few seeds can reach past
it (an AUC interval up to 1.008), so intervals are clipped to it. Every metric with a direction in
train/metrics.HIGHER_IS_BETTER has a range here (a test checks); top-k names are in [0, 1]."""


def metric_range(metric: str) -> tuple[float, float]:
    """(lowest, highest) value of a metric (``METRIC_RANGES``); unbounded for a name it lacks."""
    if metric in METRIC_RANGES:
        return METRIC_RANGES[metric]
    return (0.0, 1.0) if TOP_K.match(metric) else (-math.inf, math.inf)


def clip_ci(table: pd.DataFrame, kind: Literal["value", "delta"],
            bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """``table`` with ``ci_low``/``ci_high`` clipped to what the quantity can take.

    kind "value": a metric value, within its ``metric_range`` [a, b]; "delta": a difference of two
    such values, within [-(b - a), b - a]. The range comes from each row's ``metric`` column, or from
    ``bounds`` (a fixed (a, b)) for a table without one; a table with neither is returned unchanged.
    Means, p-values and effect sizes are untouched: only the reported interval is cut.
    """
    if bounds is None and "metric" not in table.columns:
        return table
    ranges = [bounds] * len(table) if bounds is not None else [metric_range(m) for m in table["metric"]]
    lo = np.array([a for a, _ in ranges], dtype=float)
    hi = np.array([b for _, b in ranges], dtype=float)
    if kind == "delta":
        lo, hi = -(hi - lo), hi - lo  # an unbounded end gives ±inf: no clipping on that side
    out = table.copy()
    out["ci_low"] = np.clip(out["ci_low"].to_numpy(float), lo, hi)  # NaN (n = 1) stays NaN
    out["ci_high"] = np.clip(out["ci_high"].to_numpy(float), lo, hi)
    return out

def metric_direction(metric: str, overrides: Mapping[str, str] | None = None) -> int:
    """+1 when higher is better, -1 when lower is better (registry: train/metrics.py).

    ``overrides`` maps metric -> "higher" | "lower" and wins over the built-in registry.
    """
    if overrides and metric in overrides:
        return {"higher": 1, "lower": -1}[overrides[metric]]
    try:
        return 1 if higher_is_better(metric) else -1
    except ValueError as e:
        raise ValueError(f"{e}; set StudyMeta.directions={{{metric!r}: 'higher'|'lower'}}") from None


@dataclass(frozen=True)
class StudyMeta:
    """What the report needs to know about a study besides its results.

    Attributes:
        name: study name, used as the report title.
        baseline: the variant every other variant is compared against.
        alpha: family-wise (Holm) or false-discovery (BH) level.
        correction: "holm" (default) or "bh".
        ci_level: confidence level of every interval.
        power: power used for the rough minimum detectable effect.
        directions: per-metric "higher"/"lower" overrides of the built-in registry.
    """

    name: str
    baseline: str
    alpha: float = 0.05
    correction: Literal["holm", "bh"] = "holm"
    ci_level: float = 0.95
    power: float = 0.8
    directions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        errors = []
        if not 0 < self.alpha < 1:
            errors.append(f"alpha={self.alpha!r}: expected 0 < alpha < 1")
        if self.correction not in CORRECTIONS:
            errors.append(f"correction={self.correction!r}: expected one of {sorted(CORRECTIONS)}")
        if not 0 < self.ci_level < 1:
            errors.append(f"ci_level={self.ci_level!r}: expected 0 < ci_level < 1")
        if not 0 < self.power < 1:
            errors.append(f"power={self.power!r}: expected 0 < power < 1")
        bad = {m: d for m, d in self.directions.items() if d not in ("higher", "lower")}
        if bad:
            errors.append(f"directions={bad!r}: expected 'higher' or 'lower'")
        if errors:
            raise ValueError("invalid StudyMeta: " + "; ".join(errors))


def validate_results(results: pd.DataFrame, *, require_task_type: bool = True) -> pd.DataFrame:
    """Check the tidy results contract and return a clean, sorted copy.

    Raises ValueError listing every problem found (missing columns, bad task types,
    non-finite values, duplicate keys, a task with two types).
    """
    needed = [c for c in RESULT_COLUMNS if require_task_type or c != "task_type"]
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise ValueError(f"results table is missing columns {missing}; expected columns {needed}")
    df = results.copy()
    errors = []
    if df.empty:
        errors.append("results table is empty")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    bad = df[~np.isfinite(df["value"])]
    if len(bad):
        errors.append(f"{len(bad)} non-finite 'value' rows, e.g. {bad.iloc[0][needed].to_dict()}")
    if "oracle_gap" in df.columns:
        gap = pd.to_numeric(df["oracle_gap"], errors="coerce")
        if (gap.isna() & df["oracle_gap"].notna()).any():
            errors.append("'oracle_gap' must be numbers or NaN")
        df["oracle_gap"] = gap.astype(float)
    if not pd.api.types.is_integer_dtype(df["seed"]):
        seeds = pd.to_numeric(df["seed"], errors="coerce")
        if seeds.isna().any() or (seeds % 1 != 0).any():
            errors.append(f"'seed' must be integers, got {df['seed'].unique()[:5].tolist()}")
        else:
            df["seed"] = seeds.astype(int)
    for col in ("variant", "task", "metric") + (("task_type",) if require_task_type else ()):
        df[col] = df[col].astype(str)
    key = [c for c in ("variant", "correlation", "seed", "task", "metric") if c in df.columns]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        errors.append(f"{len(dup)} duplicate rows for key {key}, e.g. {dup.iloc[0][key].to_dict()}")
    if require_task_type:
        unknown = sorted(set(df["task_type"]) - set(TASK_TYPES))
        if unknown:
            errors.append(f"task_type {unknown}: expected one of {list(TASK_TYPES)}")
        types = df.groupby("task")["task_type"].nunique()
        if (types > 1).any():
            errors.append(f"tasks with more than one task_type: {types[types > 1].index.tolist()}")
    if errors:
        raise ValueError("invalid results table: " + "; ".join(errors))
    return df.sort_values(key).reset_index(drop=True)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-distribution CI over seeds: ``mean ± t_{(1+level)/2, n-1} · s/√n``.

    One value gives a NaN interval (no spread to estimate); two give df=1, wide but finite.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return m, m - half, m + half


def summarize(df: pd.DataFrame, keys: Sequence[str], level: float = 0.95,
              value: str = "value", clip: Literal["value", "delta"] | None = "value") -> pd.DataFrame:
    """Mean ± CI of ``value`` over seeds for each ``keys`` group.

    Returns columns ``*keys, n, mean, sd, ci_low, ci_high``; NaN values are dropped first. With a
    ``metric`` key the interval is clipped to the metric's range (``clip_ci``): ``clip="value"``
    for metric values, ``"delta"`` for differences such as oracle gaps, None to leave it.
    """
    rows = []
    for k, g in df.dropna(subset=[value]).groupby(list(keys), sort=True):
        x = g[value].to_numpy(float)
        m, lo, hi = mean_ci(x, level)
        sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
        rows.append((*k, x.size, m, sd, lo, hi))
    out = pd.DataFrame(rows, columns=[*keys, "n", "mean", "sd", "ci_low", "ci_high"])
    return out if clip is None else clip_ci(out, clip)


def paired_test(diffs: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Paired t-test (one-sample t on the differences) plus Wilcoxon when n ≥ 6.

    Returns n, mean_diff, sd_diff, ci_low, ci_high, t, df, p_t, p_wilcoxon, d_z
    (Cohen's d_z = mean/sd of the differences). Zero spread (sd below float noise) is
    handled explicitly, since t is undefined there: all-zero differences give p = 1;
    identical non-zero differences give an infinite t/d_z and the exact two-sided sign-test
    p = 2·0.5^n. Equal differences are common with discrete metrics (accuracy over a fixed
    validation set) and, with 2 seeds, are no evidence of a deterministic shift.
    """
    d = np.asarray(diffs, dtype=float)
    n = d.size
    m, lo, hi = mean_ci(d, level)
    out = dict(n=n, mean_diff=m, sd_diff=math.nan, ci_low=lo, ci_high=hi, t=math.nan,
               df=n - 1, p_t=math.nan, p_wilcoxon=math.nan, d_z=math.nan)
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    if sd <= 1e-12 * max(1.0, abs(m)):  # float noise of equal differences counts as zero spread
        shift = m != 0.0
        out.update(t=math.copysign(math.inf, m) if shift else 0.0, p_t=min(1.0, 2 * 0.5**n) if shift else 1.0,
                   d_z=math.copysign(math.inf, m) if shift else 0.0)
    else:
        t = m / (sd / math.sqrt(n))
        out.update(t=t, p_t=float(2 * sps.t.sf(abs(t), n - 1)), d_z=m / sd)
    if n >= WILCOXON_MIN_N:
        # All-zero differences make scipy's signed-rank undefined; they mean "no difference".
        out["p_wilcoxon"] = 1.0 if not d.any() else float(sps.wilcoxon(d).pvalue)
    return out


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values (Holm step-down or Benjamini–Hochberg step-up).

    NaN p-values (untestable comparisons) stay NaN and are not counted in the family.
    Holm: sorted p_(i), adj_(i) = max_{j<=i} min(1, (m-j+1) p_(j)).
    BH:   adj_(i) = min_{j>=i} min(1, m/j · p_(j)).
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction method {method!r}: expected one of {sorted(CORRECTIONS)}")
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    rank = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - rank + 1) * ps))
    else:
        adj = np.minimum.accumulate((m / rank * ps)[::-1])[::-1].clip(max=1.0)
    out[order] = adj
    return out


def paired_differences(df: pd.DataFrame, baseline: str, by: Sequence[str] = ("task", "metric"),
                       level: float = 0.95) -> pd.DataFrame:
    """Seed-matched ``variant - baseline`` differences and paired tests for each ``by`` group.

    Every non-baseline variant must have exactly the baseline's seeds for every group the
    baseline has (and no group the baseline lacks); all mismatches are reported in one
    ValueError naming the variant, the group and the missing/extra seeds.

    Returns columns ``variant, *by, n, seeds, mean_diff, sd_diff, ci_low, ci_high, t, df,
    p_t, p_wilcoxon, d_z``; with ``metric`` in ``by`` the interval is clipped to the range a
    difference of that metric can take (``clip_ci``).
    """
    by = list(by)
    variants = df["variant"].unique().tolist()
    if baseline not in variants:
        raise ValueError(f"baseline variant {baseline!r} not in results; variants: {variants}")
    wide = df.pivot_table(index=by + ["seed"], columns="variant", values="value", aggfunc="first")
    errors, rows = [], []
    for v in variants:
        if v == baseline:
            continue
        for key, g in wide[[baseline, v]].groupby(level=by, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            b_seeds = set(g.index.get_level_values("seed")[g[baseline].notna()])
            v_seeds = set(g.index.get_level_values("seed")[g[v].notna()])
            if b_seeds != v_seeds:
                where = ", ".join(f"{c}={k!r}" for c, k in zip(by, key))
                errors.append(f"variant {v!r} ({where}): seeds do not match baseline {baseline!r}: "
                              f"missing {sorted(b_seeds - v_seeds)}, extra {sorted(v_seeds - b_seeds)}")
                continue
            g = g.dropna()
            res = paired_test((g[v] - g[baseline]).to_numpy(), level)
            seeds = ",".join(map(str, sorted(g.index.get_level_values("seed"))))
            rows.append({"variant": v, **dict(zip(by, key)), "seeds": seeds, **res})
    if errors:
        raise ValueError("seed mismatch in paired comparison:\n  " + "\n  ".join(errors))
    cols = ["variant", *by, "n", "seeds", "mean_diff", "sd_diff", "ci_low", "ci_high", "t", "df",
            "p_t", "p_wilcoxon", "d_z"]
    return clip_ci(pd.DataFrame(rows, columns=cols), "delta")


def min_detectable_effect(sd_diff: float, n: int, alpha: float, power: float = 0.8) -> float:
    """Rough smallest true paired difference detected with ``power`` at two-sided ``alpha``.

    MDE ≈ (t_{1-α/2, n-1} + t_{power, n-1}) · sd/√n (the usual normal-approximation power
    formula with t quantiles; rough because sd itself is estimated from n seeds).
    """
    if n < 2 or not np.isfinite(sd_diff):
        return math.nan
    q = sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)
    return float(q * sd_diff / math.sqrt(n))


def compare(df: pd.DataFrame, meta: StudyMeta, by: Sequence[str] = ("task", "metric")) -> pd.DataFrame:
    """Paired differences vs ``meta.baseline`` with correction across the whole study.

    The family is every (variant, *by) comparison in ``df``. Adds columns:
    direction (+1 higher-better / -1 lower-better), p_adj, significant,
    outcome ("better" | "worse" | "n.s." | "untested"), and mde (rough minimum
    detectable effect at the strictest corrected threshold alpha/m, i.e. what a single
    real effect must clear under Holm or BH).
    """
    out = paired_differences(df, meta.baseline, by, meta.ci_level)
    out["direction"] = [metric_direction(m, meta.directions) for m in out["metric"]]
    out["p_adj"] = adjust_pvalues(out["p_t"].to_numpy(), meta.correction)
    out["significant"] = out["p_adj"] < meta.alpha
    m = max(int(out["p_t"].notna().sum()), 1)
    improve = out["direction"] * out["mean_diff"]
    out["outcome"] = np.select(
        [out["p_t"].isna(), ~out["significant"], improve > 0], ["untested", "n.s.", "better"], "worse")
    out["mde"] = [min_detectable_effect(s, n, meta.alpha / m, meta.power)
                  for s, n in zip(out["sd_diff"], out["n"])]
    return out


def per_type_seed_values(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Average over the tasks of one type, per (variant, *by, seed, metric) — never across types.

    ``by`` adds grouping columns, e.g. ``("correlation",)`` for a sweep: one average per level.
    Each (variant, *by, task_type, metric) must average the same set of tasks in every seed,
    otherwise seeds would average different things; that is reported as a ValueError.
    Returns columns ``variant, *by, seed, task_type, metric, value, n_tasks, tasks``.
    """
    by = list(by)
    errors, rows = [], []
    for key, g in results.groupby(["variant", *by, "task_type", "metric"], sort=True):
        task_sets = g.groupby("seed")["task"].apply(frozenset)
        if task_sets.nunique() > 1:
            where = ", ".join(f"{c}={k!r}" for c, k in zip(["variant", *by], key))
            errors.append(f"{where}, {key[-2]}/{key[-1]}: task sets differ across seeds "
                          f"{ {s: sorted(t) for s, t in task_sets.items()} }")
            continue
        tasks = ",".join(sorted(task_sets.iloc[0]))
        for seed, gs in g.groupby("seed", sort=True):
            rows.append((*key[:-2], seed, *key[-2:], float(gs["value"].mean()), len(gs), tasks))
    if errors:
        raise ValueError("cannot average per task type:\n  " + "\n  ".join(errors))
    return pd.DataFrame(rows, columns=["variant", *by, "seed", "task_type", "metric", "value",
                                       "n_tasks", "tasks"])


def verdict(comparisons: pd.DataFrame, meta: StudyMeta, by: Sequence[str] = ("task", "metric"),
            context: str = "") -> list[str]:
    """Plain-English findings from a ``compare`` table: significant differences first.

    ``context`` prefixes every sentence's location (e.g. "sweep: ").
    """
    name = CORRECTIONS[meta.correction]
    tested = comparisons[comparisons["p_t"].notna()]
    untested = comparisons[comparisons["p_t"].isna()]
    lines = []
    if not untested.empty:
        lines.append(f"{context}{len(untested)} comparison(s) could not be tested: a paired test "
                     f"needs at least 2 seeds (got n = {sorted(set(untested['n']))}).")
    if tested.empty:
        return lines or [f"{context}No comparisons to test."]
    seeds = sorted(set(tested["n"]))
    n_txt = f"n = {seeds[0]}" if len(seeds) == 1 else f"n = {seeds[0]}–{seeds[-1]}"
    pct = f"{meta.ci_level:.0%}"
    sig = tested[tested["significant"]].sort_values("p_adj")
    for _, r in sig.iterrows():
        where = "/".join(str(r[c]) for c in ("task", "task_type", "metric") if c in by)
        where += "".join(f" at {c} {r[c]}" for c in by if c not in ("task", "task_type", "metric"))
        wil = "" if np.isnan(r["p_wilcoxon"]) else f"; Wilcoxon p = {_p(r['p_wilcoxon'])}"
        lines.append(
            f"{context}{r['variant']} is {r['outcome']} than {meta.baseline} on {where}: "
            f"Δ = {r['mean_diff']:+.4g} ({pct} CI {r['ci_low']:+.4g} to "
            f"{r['ci_high']:+.4g}), d_z = {r['d_z']:.2f}, {name}-adjusted p = {_p(r['p_adj'])}{wil} "
            f"({n_txt} seeds).")
    rest = len(tested) - len(sig)
    if sig.empty:
        lines.append(
            f"{context}No significant difference detected with {n_txt} seeds at α = {meta.alpha} "
            f"after {name} correction across {len(tested)} comparisons; the smallest detectable "
            f"effect at this spread is about {_mde_text(tested)} (median over comparisons, "
            f"{meta.power:.0%} power).")
    elif rest:
        # A null next to significant findings is only informative with the effect it could have seen.
        lines.append(f"{context}The other {rest} of {len(tested)} comparisons show no significant "
                     f"difference at α = {meta.alpha} ({name}); the smallest effect they could detect "
                     f"is about {_mde_text(tested[~tested['significant']])} (median, {meta.power:.0%} power).")
    return lines


def _mde_text(comparisons: pd.DataFrame) -> str:
    """'auc 0.0123, rmse 0.045': median minimum detectable effect per metric of ``comparisons``."""
    mde = comparisons.groupby("metric")["mde"].median().dropna().map(lambda x: f"{x:.3g}").to_dict()
    return ", ".join(f"{k} {v}" for k, v in mde.items()) or "not estimable"


def _p(p: float) -> str:
    """Format a p-value compactly."""
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
