"""The ablation report: every section in fixed order, embedded plots, no external assets."""
import re

import numpy as np
import pandas as pd
import pytest

from ple_adatt.report import SECTIONS, AdattDiagnostics, StudyMeta, write_report
from ple_adatt.report.stats import RESULT_COLUMNS

TASKS = [("churn", "binary", ("auc", "logloss")), ("nba", "multiclass", ("accuracy", "top3")),
         ("ltv", "regression", ("mae",))]


def results(variants=("ple", "ple_adatt"), seeds=(0, 1), oracle=True, tasks=TASKS):
    rng = np.random.default_rng(0)
    rows = [(v, s, t, tt, m, 0.7 + 0.01 * i + 0.01 * rng.standard_normal(),
             0.05 if oracle and t == "churn" else np.nan)
            for i, v in enumerate(variants) for s in seeds for t, tt, ms in tasks for m in ms]
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "oracle_gap"])


def extras():
    rng = np.random.default_rng(1)
    ent = pd.DataFrame([("ple_adatt", s, e, 1.0 - 0.1 * e + 0.01 * s) for s in (0, 1) for e in range(3)],
                       columns=["variant", "seed", "epoch", "transfer_entropy"])
    aff = {"ple_adatt": (np.corrcoef(rng.standard_normal((3, 8))), ["churn", "nba", "ltv"])}
    sweep = pd.DataFrame([(v, c, s, "churn", "auc", 0.6 + 0.2 * c + 0.01 * s + 0.005 * i)
                          for i, v in enumerate(("ple", "ple_adatt")) for c in (0.2, 0.8) for s in (0, 1)],
                         columns=["variant", "correlation", "seed", "task", "metric", "value"])
    return AdattDiagnostics(entropy=ent, affinity=aff), sweep


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    diag, sweep = extras()
    out = tmp_path_factory.mktemp("full")
    files = write_report(out, results(), {"name": "adatt-on-ple", "baseline": "ple"}, diag, sweep)
    return files


def headings(text, pattern):
    return re.findall(pattern, text, flags=re.M)


def test_full_report_has_every_section_in_order(full):
    md = full["report.md"].read_text()
    html = full["report.html"].read_text()
    assert headings(md, r"^## (.+)$") == list(SECTIONS)
    assert headings(html, r"<h2>(.+?)</h2>") == list(SECTIONS)


def test_pngs_are_written_and_embedded(full):
    pngs = {k: p for k, p in full.items() if k.endswith(".png")}
    assert {"seeds_binary.png", "seeds_multiclass.png", "seeds_regression.png",
            "adatt_affinity.png", "adatt_entropy.png", "sweep_auc.png"} <= set(pngs)
    for p in pngs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = full["report.md"].read_text()
    assert all(f"]({name})" in md for name in pngs)
    html = full["report.html"].read_text()
    assert html.count("src='data:image/png;base64,iVBORw0KGgo") == len(pngs)


def test_html_has_no_external_references(full):
    html = full["report.html"].read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert not re.search(r"https?://|<link|<script|url\(|@import", html)


def test_minimal_report_omits_optional_sections(tmp_path):
    files = write_report(tmp_path, results(oracle=False), StudyMeta("tiny", "ple"))
    md = files["report.md"].read_text()
    optional = {"Oracle gaps", "adaTT diagnostics", "Task-correlation sweep"}
    assert headings(md, r"^## (.+)$") == [s for s in SECTIONS if s not in optional]
    assert "No significant difference detected with n = 2 seeds" in md


def test_report_rejects_seed_mismatch(tmp_path):
    df = results(seeds=(0, 1, 2))
    df = df[~((df["variant"] == "ple_adatt") & (df["seed"] == 2))]
    with pytest.raises(ValueError, match=r"variant 'ple_adatt'.*missing \[2\]"):
        write_report(tmp_path, df, StudyMeta("s", "ple"))


def test_report_rejects_bad_extras(tmp_path):
    diag = AdattDiagnostics(affinity={"ple_adatt": (np.eye(3), ["a", "b"])})
    sweep = pd.DataFrame(columns=["variant", "seed", "task", "metric", "value"])
    with pytest.raises(ValueError) as e:
        write_report(tmp_path, results(), StudyMeta("s", "ple"), diag, sweep)
    assert "missing columns ['correlation']" in str(e.value)
    assert "affinity['ple_adatt']" in str(e.value)


def test_sweep_reports_the_per_type_gap_per_level(tmp_path):
    # Two regression tasks; shared-bottom's gap moves between tasks by seed but their mean is 0.1 * (1 - c).
    rows = []
    for c in (0.0, 0.5, 0.9):
        for s in (0, 1, 2):
            split = 1.0 if s % 2 else 0.0
            for t, share in (("r1", split), ("r2", 1 - split)):
                rows += [("st", c, s, t, "regression", "rmse", 1.0 + 0.001 * s),
                         ("sb", c, s, t, "regression", "rmse", 1.0 + 0.001 * s + 0.2 * share * (1 - c))]
    sweep = pd.DataFrame(rows, columns=["variant", "correlation", "seed", "task", "task_type", "metric", "value"])
    main = sweep[sweep["correlation"] == 0.5].drop(columns="correlation").assign(oracle_gap=np.nan)
    files = write_report(tmp_path, main, StudyMeta("corr", "st"), sweep=sweep)
    assert "sweep_type_gap.png" in files
    md = files["report.md"].read_text()
    row = {c: next(l for l in md.splitlines() if l.startswith(f"| regression | rmse | {c} |")) for c in (0.0, 0.5, 0.9)}
    assert "+0.1 [+0.1, +0.1]" in row[0.0] and "+0.05 [+0.05, +0.05]" in row[0.5]
    assert "+0.01 [+0.01, +0.01]" in row[0.9]


# ----------------------------------------------------------------------------- figures and fixes of issue 19

def gids(fig):
    return [a.get_gid() for ax in fig.axes for a in ax.get_children() if a.get_gid()]


def legends_clear_of_data(fig):
    """Every legend is the figure's (none inside a panel) and overlaps no panel once drawn."""
    r = fig.canvas.get_renderer()
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    return not any(leg.get_window_extent(r).overlaps(ax.get_window_extent(r))
                   for leg in fig.legends for ax in fig.axes if ax.get_visible())


@pytest.mark.parametrize("n_seeds, box", [(2, False), (4, False), (5, True)])
def test_strip_plot_draws_every_seed_and_a_box_only_from_five_seeds(n_seeds, box):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ple_adatt.report.render import BOX_MIN_N, _strip_figure

    fig = _strip_figure(results(seeds=range(n_seeds)), "binary", ["ple", "ple_adatt"])
    FigureCanvasAgg(fig).draw()
    g = gids(fig)
    assert ("box" in g) is box and ("mean" in g) is (n_seeds < BOX_MIN_N)
    dots = sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections if c.get_gid() == "seed")
    assert dots == 2 * n_seeds * 2  # every (variant, seed) of both metrics (one task): nothing hidden
    assert legends_clear_of_data(fig)


def forest_comparisons():
    """4 seeds: ple_adatt clearly better on auc (up) and on mae (down = better), clearly worse on logloss
    (up = worse), no difference on top3."""
    shift = {"auc": 0.05, "mae": -0.05, "logloss": 0.05, "top3": 0.0}
    wobble = [0.002, -0.002, 0.001, -0.001]  # per-seed Δ noise: mean 0, so top3's Δ is exactly 0
    rows = [(v, s, t, tt, m, 0.5 + 0.01 * s + (shift[m] + wobble[s] if v == "ple_adatt" else 0.0))
            for v in ("ple", "ple_adatt") for s in range(4)
            for t, tt, m in (("churn", "binary", "auc"), ("churn", "binary", "logloss"),
                             ("nba", "multiclass", "top3"), ("ltv", "regression", "mae"))]
    from ple_adatt.report.stats import compare, validate_results

    meta = StudyMeta("forest", "ple")
    comp = compare(validate_results(pd.DataFrame(rows, columns=list(RESULT_COLUMNS))), meta)
    assert comp.set_index("metric")["outcome"].to_dict() == {"auc": "better", "mae": "better",
                                                            "logloss": "worse", "top3": "n.s."}
    return comp, meta


def test_forest_plot_colours_follow_the_outcome_in_each_metrics_direction():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex

    from ple_adatt.report.render import OUTCOME_STYLE, _forest_figure

    comp, meta = forest_comparisons()
    fig = _forest_figure(comp, meta)
    FigureCanvasAgg(fig).draw()
    points = {ax.get_title(): (line.get_gid(), line.get_xdata()[0], to_hex(line.get_color()))
              for ax in fig.axes if ax.get_visible() for line in ax.lines if str(line.get_gid()).startswith("outcome:")}
    assert points["auc"][0] == "outcome:better" and points["auc"][1] > 0
    assert points["mae"][0] == "outcome:better" and points["mae"][1] < 0   # lower is better: a drop is green
    assert points["logloss"][0] == "outcome:worse" and points["logloss"][1] > 0
    assert points["top3"][0] == "outcome:n.s."
    for outcome, _, color in points.values():
        assert color == OUTCOME_STYLE[outcome.split(":")[1]][0]
    labels = {ax.get_title(): ax.get_xlabel() for ax in fig.axes if ax.get_visible()}
    assert "better →" in labels["auc"] and "← better" in labels["mae"]
    assert legends_clear_of_data(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        OUTCOME_STYLE[o][1] for o in ("better", "worse", "n.s.")]


def test_forest_plot_heads_the_report(full):
    md = full["report.md"].read_text()
    assert md.index("## Headline") < md.index("## Summary") and "](forest.png)" in md


def test_report_intervals_never_leave_the_metric_range(tmp_path):
    df = results(seeds=(0, 1), oracle=False, tasks=[("churn", "binary", ("auc",))])  # one figure: fast
    auc = df["metric"] == "auc"
    df.loc[auc, "value"] = np.where(df.loc[auc, "seed"] == 0, 0.995, 1.0)  # raw interval reaches ~1.03
    files = write_report(tmp_path, df, StudyMeta("clip", "ple"))
    summary = pd.read_csv(files["summary.csv"])
    assert summary.loc[summary["metric"] == "auc", "ci_high"].max() == 1.0
    md = files["report.md"].read_text().splitlines()
    row = next(line for line in md if line.startswith("| churn | binary | auc |"))
    assert "0.9975 [0.9657, 1]" in row
    assert "clipped to the metric's range" in files["report.md"].read_text()


def entropy_two_seeds():
    """Seed 1 stopped an epoch earlier (early stopping); values near the uniform 1.0; seed 1's last epoch
    logged twice (a resumed run: the later value counts). Final values 0.9995 and 0.9999."""
    rows = [("ple_adatt", 0, e, 0.9997 - 0.0001 * e) for e in range(3)]
    rows += [("ple_adatt", 1, 0, 0.9999), ("ple_adatt", 1, 1, 0.9998), ("ple_adatt", 1, 1, 0.9999)]
    return pd.DataFrame(rows, columns=["variant", "seed", "epoch", "transfer_entropy"])


def test_adatt_final_entropy_counts_every_seed_that_ran(tmp_path):
    from ple_adatt.report.render import _entropy_rows, _final_entropy_table

    t = _final_entropy_table(_entropy_rows(entropy_two_seeds()), 0.95)
    assert t[["variant", "final epoch", "n (seeds)"]].values.tolist() == [["ple_adatt", "1–2", 2]]
    assert t["entropy"].iloc[0].startswith("0.9997 [0.99") and t["entropy"].iloc[0].endswith(", 1]")  # clipped at 1
    files = write_report(tmp_path, results(oracle=False, tasks=[("churn", "binary", ("auc",))]), StudyMeta("s", "ple"),
                         AdattDiagnostics(entropy=entropy_two_seeds()))
    assert "| ple_adatt | 1–2 | 0.9997 [" in files["report.md"].read_text()


def test_adatt_entropy_axis_spans_zero_to_uniform_so_flat_looks_flat():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ple_adatt.report.render import _entropy_figure, _entropy_rows

    fig = _entropy_figure(_entropy_rows(entropy_two_seeds()), 0.95)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.05)
    assert any(set(line.get_ydata()) == {1.0} for line in ax.lines)  # the uniform value, marked
    assert legends_clear_of_data(fig)
