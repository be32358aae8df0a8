"""Ablation report: Markdown + standalone HTML (plots embedded as data URIs) + PNGs.

The report is built once as a list of sections of plain blocks (paragraph, bullet list,
table, image) and rendered twice, so the Markdown and HTML always say the same thing.
Plots use matplotlib's Agg canvas directly (no pyplot global state, safe in Ray workers).
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

import ple_adatt.report.stats as st  # the module, not the package (whose __init__ imports render)
from ple_adatt.train.metrics import METRICS_BY_TYPE, higher_is_better

_REPORTED = list(dict.fromkeys(m for names in METRICS_BY_TYPE.values() for m in names))

# Fixed order and wording; optional sections are left out when their input is absent.
SECTIONS = (
    "Headline",
    "Summary",
    "Verdict",
    "Per-task results",
    "Paired differences vs baseline",
    "Per-type averages",
    "Oracle gaps",
    "Plots",
    "adaTT diagnostics",
    "Task-correlation sweep",
    "Method",
)
SWEEP_COLUMNS = ("variant", "correlation", "seed", "task", "metric", "value")
ENTROPY_COLUMNS = ("variant", "seed", "epoch", "transfer_entropy")
ENTROPY_RANGE = (0.0, 1.0)  # adatt/diagnostics.transfer_entropy is normalised: 1 = uniform transfer
BOX_MIN_N = 5  # fewer seeds than this: every seed's dot and the mean, no box (quartiles of 2 points mislead)
OUTCOME_STYLE = {"better": ("#1a9850", "significantly better"),
                 "worse": ("#d73027", "significantly worse"),
                 "n.s.": ("#6f6f6f", "no significant difference"),
                 "untested": ("#bdbdbd", "untested (n < 2 seeds)")}
"""compare()'s outcome -> (colour, legend wording) in the headline forest plot."""


@dataclass(frozen=True)
class AdattDiagnostics:
    """adaTT diagnostics for the report.

    Attributes:
        entropy: per-epoch transfer-weight entropy, columns variant, seed, epoch,
            transfer_entropy (one row per variant, seed, epoch).
        affinity: variant -> (final-epoch T×T affinity matrix, its T task labels).
    """

    entropy: pd.DataFrame | None = None
    affinity: Mapping[str, tuple[np.ndarray, Sequence[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Image:
    file: str
    caption: str


Block = Union[str, list, pd.DataFrame, _Image]


def write_report(out_dir: str | Path, results: pd.DataFrame, meta: st.StudyMeta | Mapping,
                 diagnostics: AdattDiagnostics | None = None,
                 sweep: pd.DataFrame | None = None) -> dict[str, Path]:
    """Compute the study statistics and write the report files into ``out_dir``.

    Args:
        out_dir: created if missing; existing report files are overwritten.
        results: tidy table, one row per (variant, seed, task, metric); see ``stats``.
        meta: ``StudyMeta`` or a mapping of its fields (name, baseline, alpha, correction, ...).
        diagnostics: optional adaTT entropy curves and final-epoch affinity matrices.
        sweep: optional table variant, correlation, seed, task, metric, value.

    Returns:
        file name -> path for report.md, report.html, comparisons.csv, summary.csv and every PNG.

    Raises:
        ValueError: on any contract violation (columns, seeds not matching the baseline, ...).
    """
    meta = meta if isinstance(meta, st.StudyMeta) else st.StudyMeta(**dict(meta))
    df = st.validate_results(results)
    order = list(dict.fromkeys(results["variant"].astype(str)))  # the study's own variant order
    if meta.baseline not in order:
        raise ValueError(f"baseline variant {meta.baseline!r} not in results; variants: {order}")
    variants = [meta.baseline] + [v for v in order if v != meta.baseline]
    _validate_extras(diagnostics, sweep, meta)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    summary = st.summarize(df, ["variant", "task", "task_type", "metric"], meta.ci_level)
    comp = st.compare(df, meta)
    type_vals = st.per_type_seed_values(df)
    type_summary = st.summarize(type_vals, ["variant", "task_type", "metric"], meta.ci_level)
    # Task sets match across variants here: compare() above rejects a variant missing a task.
    type_tasks = type_vals.groupby(["task_type", "metric"], as_index=False)["tasks"].first()
    type_diff = st.paired_differences(type_vals, meta.baseline, ("task_type", "metric"), meta.ci_level)
    sweep_comp = None
    if sweep is not None:
        sweep = st.validate_results(sweep, require_task_type=False)
        sweep_comp = st.compare(sweep, meta, by=("correlation", "task", "metric"))
    for name, table in (("summary.csv", summary), ("comparisons.csv", comp)):
        table.to_csv(out / name, index=False)
        files[name] = out / name

    def plot(name: str, fig: Figure) -> str:
        path = out / name
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: stable bytes
        files[name] = path
        return name

    verdict_lines = st.verdict(comp, meta)
    if sweep_comp is not None:
        verdict_lines += st.verdict(sweep_comp, meta, ("correlation", "task", "metric"),
                                    context="Correlation sweep: ")
    doc: list[tuple[str, list[Block]]] = [
        ("Headline", [
            f"Δ = variant − {meta.baseline} per task, seed-matched, with its {meta.ci_level:.0%} CI; "
            f"colour = outcome after {st.CORRECTIONS[meta.correction]} correction, which accounts for "
            "each metric's direction (the axis label points to the better side). The interval is the "
            "uncorrected per-comparison CI, so a grey one may just miss 0.",
            _Image(plot("forest.png", _forest_figure(comp, meta)), f"Δ vs {meta.baseline} per task")]),
        ("Summary", _summary_blocks(df, comp, meta, variants)),
        ("Verdict", [verdict_lines]),
        ("Per-task results", [
            f"Mean [{meta.ci_level:.0%} CI] over seeds, per variant.",
            _wide_ci(summary, ["task", "task_type", "metric"], variants)]),
        ("Paired differences vs baseline", [
            f"Δ = variant − {meta.baseline}, seed-matched. The outcome column accounts for the metric "
            f"direction; p adj is {st.CORRECTIONS[meta.correction]} across all "
            f"{int(comp['p_t'].notna().sum())} comparisons.",
            _comparison_table(comp, ["task", "metric"], meta)]),
        ("Per-type averages", [
            "Each seed's metric is averaged over the tasks of one type, then the CI is taken "
            "over seeds; types are never mixed. Descriptive: not part of the corrected family.",
            type_tasks.merge(_wide_ci(type_summary, ["task_type", "metric"], variants),
                             on=["task_type", "metric"]),
            f"Paired Δ = variant − {meta.baseline} of the per-type averages, mean "
            f"[{meta.ci_level:.0%} CI] over seeds:",
            _diff_ci_table(type_diff, ["task_type", "metric"], variants[1:])]),
    ]
    if "oracle_gap" in df.columns and df["oracle_gap"].notna().any():
        gaps = st.summarize(df, ["variant", "task", "metric"], meta.ci_level, value="oracle_gap",
                            clip="delta")
        doc.append(("Oracle gaps", [
            "Oracle gap as reported by the evaluator, in the metric's units (positive = the model is "
            "worse than the oracle, for every metric); mean "
            f"[{meta.ci_level:.0%} CI] over seeds.",
            _wide_ci(gaps, ["task", "metric"], variants)]))
    doc.append(("Plots", [_Image(plot(f"seeds_{_slug(tt)}.png", _strip_figure(df, tt, variants)),
                                 f"{tt} metrics over seeds")
                          for tt in st.TASK_TYPES if tt in set(df["task_type"])]))
    if diagnostics is not None and (diagnostics.entropy is not None or diagnostics.affinity):
        doc.append(("adaTT diagnostics", _adatt_blocks(diagnostics, meta, plot)))
    if sweep_comp is not None:
        doc.append(("Task-correlation sweep", _sweep_blocks(sweep, sweep_comp, meta, plot)))
    doc.append(("Method", _method_blocks(df, comp, meta, sweep_comp)))

    title = f"Ablation report: {meta.name}"
    (out / "report.md").write_text(_to_markdown(title, doc), encoding="utf-8")
    (out / "report.html").write_text(_to_html(title, doc, out), encoding="utf-8")
    files["report.md"], files["report.html"] = out / "report.md", out / "report.html"
    return files


# ----------------------------------------------------------------------------- validation

def _validate_extras(diag: AdattDiagnostics | None, sweep: pd.DataFrame | None,
                     meta: st.StudyMeta) -> None:
    """Check the optional inputs' contracts; every problem in one ValueError."""
    errors = []
    if sweep is not None:
        missing = [c for c in SWEEP_COLUMNS if c not in sweep.columns]
        if missing:
            errors.append(f"sweep table is missing columns {missing}; expected {list(SWEEP_COLUMNS)}")
        elif meta.baseline not in set(sweep["variant"]):
            errors.append(f"sweep has no rows for baseline {meta.baseline!r}")
    if diag is not None:
        if diag.entropy is not None:
            missing = [c for c in ENTROPY_COLUMNS if c not in diag.entropy.columns]
            if missing:
                errors.append(f"diagnostics.entropy is missing columns {missing}; "
                              f"expected {list(ENTROPY_COLUMNS)}")
        for v, item in diag.affinity.items():
            mat, labels = item
            mat = np.asarray(mat)
            if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != len(labels):
                errors.append(f"diagnostics.affinity[{v!r}]: expected a T×T matrix with T task "
                              f"labels, got shape {mat.shape} and {len(labels)} labels")
    if errors:
        raise ValueError("invalid report inputs: " + "; ".join(errors))


# ----------------------------------------------------------------------------- sections

def _summary_blocks(df, comp, meta, variants) -> list[Block]:
    seeds = sorted(df["seed"].unique())
    by_type = df.groupby("task_type")["task"].unique()
    counts = comp["outcome"].value_counts()
    return [[
        f"Study: {meta.name}; baseline: {meta.baseline}.",
        f"Variants ({len(variants)}): {', '.join(variants)}.",
        f"Seeds ({len(seeds)}): {', '.join(map(str, seeds))}.",
        "Tasks: " + "; ".join(f"{t}: {', '.join(sorted(by_type[t]))}"
                              for t in st.TASK_TYPES if t in by_type.index) + ".",
        f"Comparisons vs baseline: {len(comp)}; significant better: {counts.get('better', 0)}, "
        f"significant worse: {counts.get('worse', 0)}, not significant: {counts.get('n.s.', 0)}"
        + (f", untested: {counts['untested']}" if counts.get("untested", 0) else "") + ".",
    ]]


def _adatt_blocks(diag: AdattDiagnostics, meta, plot) -> list[Block]:
    blocks: list[Block] = []
    if diag.affinity:
        blocks.append(_Image(plot("adatt_affinity.png", _affinity_figure(diag.affinity)),
                             "final-epoch task affinity matrix per variant"))
    if diag.entropy is not None and not diag.entropy.empty:
        ent = _entropy_rows(diag.entropy)
        blocks.append(_Image(plot("adatt_entropy.png", _entropy_figure(ent, meta.ci_level)),
                             f"normalised transfer-weight entropy over epochs (1 = uniform transfer), "
                             f"mean ± {meta.ci_level:.0%} CI over seeds"))
        blocks += ["Normalised transfer-weight entropy at each seed's final epoch (1 = uniform transfer, "
                   "0 = one source per task), mean [CI] over seeds:", _final_entropy_table(ent, meta.ci_level)]
    return blocks


def _entropy_rows(entropy: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, seed, epoch): a value logged twice at one epoch (a resumed run) counts once."""
    ent = entropy.astype({"epoch": int, "seed": int})
    return ent.drop_duplicates(["variant", "seed", "epoch"], keep="last").reset_index(drop=True)


def _final_entropy_table(ent: pd.DataFrame, level: float) -> pd.DataFrame:
    """Entropy at each seed's own last epoch, per variant: n counts every seed that ran, also when
    seeds stopped at different epochs (early stopping), which a shared "last epoch" would drop."""
    last = ent[ent["epoch"] == ent.groupby(["variant", "seed"])["epoch"].transform("max")]
    s = st.clip_ci(st.summarize(last, ["variant"], level, value="transfer_entropy"), "value", ENTROPY_RANGE)
    epochs = last.groupby("variant")["epoch"].agg(
        lambda e: str(e.min()) if e.min() == e.max() else f"{e.min()}–{e.max()}")
    order = list(dict.fromkeys(ent["variant"]))
    s = s.set_index("variant").loc[order].reset_index()
    return pd.DataFrame({"variant": s["variant"], "final epoch": epochs.loc[order].to_numpy(),
                         "entropy": [_ci(*r) for r in s[["mean", "ci_low", "ci_high"]].values],
                         "n (seeds)": s["n"]})


def _sweep_blocks(sweep, comp, meta, plot) -> list[Block]:
    summ = st.summarize(sweep, ["variant", "correlation", "task", "metric"], meta.ci_level)
    variants = [meta.baseline] + [v for v in dict.fromkeys(sweep["variant"]) if v != meta.baseline]
    blocks: list[Block] = [
        f"Metric vs task correlation, mean [{meta.ci_level:.0%} CI] over seeds. Paired differences "
        f"vs {meta.baseline} at each correlation level form their own corrected family "
        f"({int(comp['p_t'].notna().sum())} comparisons)."]
    blocks += [_Image(plot(f"sweep_{_slug(m)}.png", _sweep_figure(summ[summ["metric"] == m], m, variants)),
                      f"{m} vs task correlation") for m in sorted(summ["metric"].unique())]
    blocks += [_wide_ci(summ, ["task", "metric", "correlation"], variants),
               _comparison_table(comp, ["correlation", "task", "metric"], meta)]
    if "task_type" in sweep.columns and sweep.groupby(["task_type", "metric"])["task"].nunique().max() > 1:
        blocks += _sweep_type_blocks(sweep, meta, variants, plot)
    return blocks


def _sweep_type_blocks(sweep, meta, variants, plot) -> list[Block]:
    """Per level, each seed's metric averaged over the tasks of one type, and the paired gap to the
    baseline: with a narrow shared model the gap can move from one task to the other between seeds,
    while their average follows the task correlation (MMoE paper, Fig. 3)."""
    vals = st.per_type_seed_values(sweep, by=("correlation",))
    vals = vals[vals["n_tasks"] > 1]
    diff = st.paired_differences(vals, meta.baseline, ("correlation", "task_type", "metric"), meta.ci_level)
    keys = ["task_type", "metric", "correlation"]
    table = _wide_ci(st.summarize(vals, ["variant", *keys], meta.ci_level), keys, variants).merge(
        _diff_ci_table(diff, keys, variants[1:]), on=keys)
    return [f"Per-type averages per level (descriptive, not part of the corrected family): each seed's "
            f"metric averaged over the tasks of one type, Δ = variant − {meta.baseline}, mean "
            f"[{meta.ci_level:.0%} CI] over seeds.",
            _Image(plot("sweep_type_gap.png", _sweep_gap_figure(diff, meta.baseline)),
                   f"gap to {meta.baseline} vs task correlation, per-type average"),
            table]


def _method_blocks(df, comp, meta, sweep_comp) -> list[Block]:
    seeds = sorted(df["seed"].unique())
    m = int(comp["p_t"].notna().sum())
    lines = [
        f"Seeds: {len(seeds)} ({', '.join(map(str, seeds))}); every comparison pairs the same "
        "seed of the variant and the baseline.",
        f"Intervals: two-sided {meta.ci_level:.0%} t-intervals over seeds (df = n − 1), clipped to "
        "the metric's range in every table and plot (auc, pr_auc, accuracy, macro_f1, top-k in "
        "[0, 1]; r2 ≤ 1; logloss, mae, rmse ≥ 0); an interval of a difference Δ is clipped to "
        "± the range's width. A t-interval over few seeds can reach past a bound (an AUC up to 1.008); "
        "the clipped end means the data cannot tell more than the bound.",
        "Test: paired t-test on the seed-matched differences; Wilcoxon signed-rank as a "
        f"secondary when n ≥ {st.WILCOXON_MIN_N}. Effect size: Cohen's d_z = mean(Δ) / sd(Δ).",
        f"Correction: {st.CORRECTIONS[meta.correction]} across all {m} (variant, task, metric) "
        f"comparisons of the study; significance level α = {meta.alpha}.",
        f"Direction: higher is better for {', '.join(m for m in _REPORTED if higher_is_better(m))}; lower is "
        f"better for {', '.join(m for m in _REPORTED if not higher_is_better(m))}"
        + (f"; overrides {dict(meta.directions)}" if meta.directions else "") + ".",
        "Minimum detectable effect (mde): (q(1 − α/(2m)) + q(power)) · sd(Δ)/√n with q the t "
        f"quantile at n − 1 df: {meta.power:.0%} power at the strictest corrected threshold "
        "α/m; rough, since sd(Δ) is itself estimated from few seeds.",
        "Per-type averages: mean over tasks of one type per seed, then the interval over "
        "seeds; metrics of different task types are never averaged together.",
        f"Plots: with fewer than {BOX_MIN_N} seeds every seed is a dot and the bar is the mean; "
        f"from {BOX_MIN_N} seeds a box (quartiles) is drawn behind the dots.",
    ]
    if sweep_comp is not None:
        lines.append("Correlation sweep: paired differences per correlation level, corrected "
                     f"({st.CORRECTIONS[meta.correction]}) as a separate family of "
                     f"{int(sweep_comp['p_t'].notna().sum())} comparisons.")
    return [lines]


# ----------------------------------------------------------------------------- tables

def _num(x: float, signed: bool = False) -> str:
    return "–" if pd.isna(x) else f"{x:+.4g}" if signed else f"{x:.4g}"


def _ci(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """'mean [lo, hi]' with 4 significant digits; just the mean when the CI is undefined."""
    m = _num(mean, signed)
    return m if pd.isna(lo) else f"{m} [{_num(lo, signed)}, {_num(hi, signed)}]"


def _wide_ci(summary: pd.DataFrame, keys: list[str], variants: list[str]) -> pd.DataFrame:
    """Rows = keys, one 'mean [lo, hi]' column per variant (in study order)."""
    s = summary.assign(cell=[_ci(*r) for r in summary[["mean", "ci_low", "ci_high"]].values])
    wide = s.pivot_table(index=keys, columns="variant", values="cell", aggfunc="first")
    return wide.reindex(columns=[v for v in variants if v in wide.columns]).fillna("–").reset_index()


def _diff_ci_table(diff: pd.DataFrame, keys: list[str], variants: list[str]) -> pd.DataFrame:
    """Rows = keys, one 'Δ vs baseline [lo, hi]' column per non-baseline variant."""
    d = diff.assign(cell=[_ci(*r, signed=True) for r in diff[["mean_diff", "ci_low", "ci_high"]].values],
                    variant="Δ " + diff["variant"])
    wide = d.pivot_table(index=keys, columns="variant", values="cell", aggfunc="first")
    return wide.reindex(columns=["Δ " + v for v in variants if "Δ " + v in wide.columns]).reset_index()


def _comparison_table(comp: pd.DataFrame, keys: list[str], meta) -> pd.DataFrame:
    pct = f"{meta.ci_level:.0%}"
    return pd.DataFrame({
        "variant": comp["variant"], **{k: comp[k] for k in keys},
        "n": comp["n"],
        "Δ": comp["mean_diff"].map(lambda x: "–" if pd.isna(x) else f"{x:+.4g}"),
        f"{pct} CI": [f"[{_num(lo)}, {_num(hi)}]" for lo, hi in comp[["ci_low", "ci_high"]].values],
        "d_z": comp["d_z"].map(lambda x: "–" if pd.isna(x) else f"{x:.2f}"),
        "p (t)": comp["p_t"].map(_pfmt),
        "p (Wilcoxon)": comp["p_wilcoxon"].map(_pfmt),
        f"p adj ({meta.correction})": comp["p_adj"].map(_pfmt),
        "mde": comp["mde"].map(_num),
        "outcome": comp["outcome"],
    })


def _pfmt(p: float) -> str:
    return "–" if pd.isna(p) else st._p(p)


# ----------------------------------------------------------------------------- figures

def _colors(variants: Sequence[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _variant_legend(fig: Figure, axes) -> None:
    """One legend for the whole figure, right of the panels, so it never covers data."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")


def _strip_figure(df: pd.DataFrame, task_type: str, variants: list[str]) -> Figure:
    """One panel per metric of this type: every seed's dot per (task, variant) and a bar at the mean;
    a box behind them only from BOX_MIN_N seeds (a box of 2-4 points draws quartiles that aren't there)."""
    sub = df[df["task_type"] == task_type]
    metrics = sorted(sub["metric"].unique())
    fig = Figure(figsize=(max(4.0, 3.2 * len(metrics)) + 1.4, 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors, width = _colors(variants), 0.8 / len(variants)
    for ax, met in zip(axes, metrics):
        tasks = sorted(sub.loc[sub["metric"] == met, "task"].unique())
        for j, v in enumerate(variants):
            for i, task in enumerate(tasks):
                y = sub.loc[(sub["metric"] == met) & (sub["task"] == task) & (sub["variant"] == v),
                            "value"].to_numpy()
                if y.size == 0:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                if y.size >= BOX_MIN_N:
                    box = ax.boxplot([y], positions=[x], widths=width * 0.8, showfliers=False,
                                     medianprops={"color": colors[v]}, boxprops={"color": colors[v]},
                                     whiskerprops={"color": colors[v]}, capprops={"color": colors[v]})
                    for artist in (a for group in box.values() for a in group):
                        artist.set_gid("box")
                else:
                    ax.hlines(y.mean(), x - width * 0.35, x + width * 0.35, color=colors[v], lw=2,
                              gid="mean")
                jitter = np.linspace(-width * 0.25, width * 0.25, y.size) if y.size > 1 else [0.0]
                ax.scatter(x + np.asarray(jitter), y, s=30, color=colors[v], zorder=3,
                           edgecolors="white", linewidths=0.5, label=v if i == 0 else None, gid="seed")
        ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_title(met)
        ax.grid(axis="y", alpha=0.3)
    _variant_legend(fig, axes)
    n = sub.groupby(["variant", "task", "metric"])["seed"].nunique().min()
    shape = "dot = one seed, bar = mean" if n < BOX_MIN_N else "dot = one seed, box = quartiles"
    fig.suptitle(f"{task_type}: per-seed values ({shape})")
    return fig


def _forest_figure(comp: pd.DataFrame, meta) -> Figure:
    """Headline: Δ vs baseline with its CI, one panel per metric (own units), one row per task (and
    variant), coloured by outcome; the axis label points to the metric's better side."""
    metrics = [m for m in _REPORTED if m in set(comp["metric"])]
    metrics += sorted(set(comp["metric"]) - set(metrics))
    multi = comp["variant"].nunique() > 1
    panels = [comp[comp["metric"] == m].sort_values(["task", "variant"]) for m in metrics]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    heights = [max(len(g) for g in panels[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
    fig = Figure(figsize=(3.9 * ncols + 0.6, sum(0.32 * h + 1.2 for h in heights) + 0.8),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, met, g in zip(axes.flat, metrics, panels):
        y = np.arange(len(g))
        for yi, r in zip(y, g.itertuples()):
            color = OUTCOME_STYLE[r.outcome][0]
            if np.isfinite(r.ci_low):
                ax.plot([r.ci_low, r.ci_high], [yi, yi], color=color, lw=2.2, solid_capstyle="butt")
            ax.plot([r.mean_diff], [yi], "o", ms=6, color=color,
                    mfc=color if r.outcome != "untested" else "white", gid=f"outcome:{r.outcome}")
        ax.axvline(0.0, color="black", lw=0.8)
        ends = np.concatenate([g["mean_diff"], g["ci_low"], g["ci_high"], [0.0]]).astype(float)
        ends = ends[np.isfinite(ends)]
        pad = 0.08 * (np.ptp(ends) or max(abs(ends).max(), 1e-3))
        ax.set_xlim(ends.min() - pad, ends.max() + pad)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # fewer ticks: labels like -0.075 don't collide
        labels = [f"{t} · {v}" if multi else t for t, v in zip(g["task"], g["variant"])]
        ax.set_yticks(y, labels)
        ax.set_ylim(len(g) - 0.5, -0.5)  # first task on top
        better = "better →" if st.metric_direction(met, meta.directions) > 0 else "← better"
        ax.set_xlabel(f"Δ {met}   ({better})")
        ax.set_title(met)
        ax.grid(axis="x", alpha=0.3)
    present = [o for o in OUTCOME_STYLE if o in set(comp["outcome"])]
    handles = [Line2D([], [], color=OUTCOME_STYLE[o][0], marker="o", lw=2.2,
                      mfc=OUTCOME_STYLE[o][0] if o != "untested" else "white") for o in present]
    fig.legend(handles, [OUTCOME_STYLE[o][1] for o in present], loc="outside lower center",
               ncols=len(present), fontsize="small")
    variants = ", ".join(dict.fromkeys(comp["variant"]))
    fig.suptitle(f"{variants} vs {meta.baseline}: Δ per task, {meta.ci_level:.0%} CI over seeds")
    return fig


def _affinity_figure(affinity: Mapping[str, tuple[np.ndarray, Sequence[str]]]) -> Figure:
    n = len(affinity)
    fig = Figure(figsize=(4.2 * n, 3.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (v, (mat, labels)) in zip(axes, affinity.items()):
        mat = np.asarray(mat, dtype=float)
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)  # cosine affinities live in [-1, 1]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        if len(labels) <= 12:
            for (i, j), val in np.ndenumerate(mat):
                if np.isfinite(val):
                    ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(val) > 0.6 else "black")  # readable on dark cells
        ax.set_title(v)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _entropy_figure(ent: pd.DataFrame, level: float) -> Figure:
    """Normalised entropy per epoch on its whole range [0, 1] with the uniform value marked, so a flat
    curve near 1 looks flat (an auto-scaled axis of 0.9994-0.9998 made noise look like a trend)."""
    fig = Figure(figsize=(7.2, 3.6), layout="constrained")
    ax = fig.subplots()
    variants = list(dict.fromkeys(ent["variant"]))
    colors = _colors(variants)
    s = st.clip_ci(st.summarize(ent, ["variant", "epoch"], level, value="transfer_entropy"),
                   "value", ENTROPY_RANGE)
    ax.axhline(ENTROPY_RANGE[1], color="grey", ls="--", lw=1, label="uniform transfer (1)")
    for v in variants:
        g = s[s["variant"] == v]
        ax.plot(g["epoch"], g["mean"], marker="o", color=colors[v], label=v)
        ax.fill_between(g["epoch"], g["ci_low"], g["ci_high"], color=colors[v], alpha=0.2)
    ax.set(xlabel="epoch", ylabel="entropy / log(#sources)", ylim=(0.0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    _variant_legend(fig, [ax])
    return fig


def _sweep_figure(summ: pd.DataFrame, metric: str, variants: list[str]) -> Figure:
    tasks = sorted(summ["task"].unique())
    fig = Figure(figsize=(max(4.0, 3.6 * len(tasks)) + 1.4, 3.6), layout="constrained")  # + the legend
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = _colors(variants)
    levels = np.unique(summ["correlation"])
    dodge = 0.015 * (np.ptp(levels) or 1.0)  # shift variants sideways so error bars don't overlap
    for ax, task in zip(axes, tasks):
        for j, v in enumerate(variants):
            g = summ[(summ["task"] == task) & (summ["variant"] == v)].sort_values("correlation")
            if g.empty:
                continue
            err = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]])
            x = g["correlation"] + dodge * (j - (len(variants) - 1) / 2)
            ax.errorbar(x, g["mean"], yerr=np.nan_to_num(err), marker="o",
                        capsize=3, color=colors[v], label=v)
        ax.set(title=task, xlabel="task correlation", ylabel=metric)
    _variant_legend(fig, axes)
    return fig


def _sweep_gap_figure(diff: pd.DataFrame, baseline: str) -> Figure:
    panels = list(diff.groupby(["task_type", "metric"], sort=True))
    fig = Figure(figsize=(max(4.0, 3.6 * len(panels)) + 1.4, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = _colors(sorted(diff["variant"].unique()))
    for ax, ((tt, met), g) in zip(axes, panels):
        for v, gv in g.groupby("variant", sort=True):
            gv = gv.sort_values("correlation")
            err = np.vstack([gv["mean_diff"] - gv["ci_low"], gv["ci_high"] - gv["mean_diff"]])
            ax.errorbar(gv["correlation"], gv["mean_diff"], yerr=np.nan_to_num(err), marker="o",
                        capsize=3, color=colors[v], label=v)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(title=f"{tt} (mean of tasks)", xlabel="task correlation", ylabel=f"Δ {met} vs {baseline}")
    _variant_legend(fig, axes)
    return fig


# ----------------------------------------------------------------------------- rendering

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))


def _md_cell(x) -> str:
    return str(x).replace("|", r"\|").replace("\n", " ")


def _to_markdown(title: str, doc) -> str:
    parts = [f"# {title}"]
    for heading, blocks in doc:
        parts.append(f"## {heading}")
        for b in blocks:
            if isinstance(b, str):
                parts.append(b)
            elif isinstance(b, list):
                parts.append("\n".join(f"- {_md_cell(x)}" for x in b))
            elif isinstance(b, pd.DataFrame):
                cols = [_md_cell(c) for c in b.columns]
                rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                rows += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in b.values]
                parts.append("\n".join(rows))
            else:
                parts.append(f"![{b.caption}]({b.file})")
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1em 0}")


def _to_html(title: str, doc, out: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"]
    for heading, blocks in doc:
        parts.append(f"<h2>{e(heading)}</h2>")
        for b in blocks:
            if isinstance(b, str):
                parts.append(f"<p>{e(b)}</p>")
            elif isinstance(b, list):
                parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in b) + "</ul>")
            elif isinstance(b, pd.DataFrame):
                head = "".join(f"<th>{e(str(c))}</th>" for c in b.columns)
                body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>"
                               for r in b.values)
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode((out / b.file).read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{e(b.caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
