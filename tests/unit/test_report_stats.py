"""Ablation statistics against hand-computed values and scipy on small arrays."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ple_adatt.report.stats import (
    METRIC_RANGES,
    RESULT_COLUMNS,
    StudyMeta,
    adjust_pvalues,
    clip_ci,
    compare,
    mean_ci,
    min_detectable_effect,
    metric_direction,
    metric_range,
    paired_differences,
    paired_test,
    per_type_seed_values,
    summarize,
    validate_results,
    verdict,
)

T975_DF3 = 3.182446305284263  # t_{0.975, 3}
T975_DF1 = 12.706204736174698  # t_{0.975, 1}


def table(rows):
    return validate_results(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)))


def two_variants(base, var, task="churn", task_type="binary", metric="auc", seeds=None):
    seeds = seeds or list(range(len(base)))
    rows = [("base", s, task, task_type, metric, b) for s, b in zip(seeds, base)]
    rows += [("new", s, task, task_type, metric, v) for s, v in zip(seeds, var)]
    return table(rows)


def test_mean_ci_matches_t_formula():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = T975_DF3 * math.sqrt(5 / 3) / 2  # t · s/√n, s² = 5/3
    assert m == 2.5
    assert lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)


def test_mean_ci_single_value_has_no_interval():
    m, lo, hi = mean_ci([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)


def test_paired_test_hand_values_and_scipy():
    base, var = [10.0, 10, 10, 10], [11.0, 12, 13, 14]  # differences 1, 2, 3, 4
    r = paired_test(np.subtract(var, base))
    se = math.sqrt(5 / 3) / 2
    assert r["mean_diff"] == 2.5 and r["df"] == 3
    assert r["t"] == pytest.approx(2.5 / se)
    assert r["d_z"] == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2.5 - T975_DF3 * se, 2.5 + T975_DF3 * se))
    ref = sps.ttest_rel(var, base)
    assert r["t"] == pytest.approx(ref.statistic) and r["p_t"] == pytest.approx(ref.pvalue)
    assert math.isnan(r["p_wilcoxon"])  # n < 6: no secondary test


def test_paired_test_two_seeds_is_wide_but_finite():
    r = paired_test([1.0, 3.0])  # mean 2, sd √2, se 1, t 2 with df 1 (a Cauchy)
    assert r["t"] == pytest.approx(2.0)
    assert r["p_t"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - T975_DF1, 2 + T975_DF1))


def test_paired_test_wilcoxon_from_six_seeds():
    d = [0.3, -0.1, 0.4, 0.2, 0.5, 0.25]
    assert paired_test(d)["p_wilcoxon"] == pytest.approx(sps.wilcoxon(d).pvalue)


def test_paired_test_zero_spread():
    assert paired_test([0.0, 0.0, 0.0])["p_t"] == 1.0
    shift = paired_test([0.5, 0.5, 0.5])  # t undefined: exact two-sided sign test, 2 * 0.5**3
    assert shift["p_t"] == 0.25 and shift["t"] == math.inf
    assert paired_test([0.01] * 7)["p_t"] == pytest.approx(2 * 0.5**7)


def test_equal_differences_up_to_float_noise_are_zero_spread():
    # -7/2000 in both seeds, computed from different accuracies: equal up to rounding. A t-test on
    # that spread reported d_z ~ -1e14 and p < 1e-4 in a 2-seed study; it is no evidence at all.
    d = [0.1395 - 0.1430, 0.1360 - 0.1395]
    out = paired_test(d)
    assert out["p_t"] == 0.5 and out["d_z"] == -math.inf


def test_paired_differences_is_seed_matched():
    # Seeds listed in different orders per variant: pairing must follow the seed, not the row.
    rows = [("base", s, "a", "binary", "auc", v) for s, v in [(3, 0.5), (1, 0.7), (2, 0.6)]]
    rows += [("new", s, "a", "binary", "auc", v) for s, v in [(1, 0.72), (2, 0.63), (3, 0.54)]]
    out = paired_differences(table(rows), "base")
    assert out["mean_diff"].iloc[0] == pytest.approx(np.mean([0.02, 0.03, 0.04]))
    assert out["seeds"].iloc[0] == "1,2,3"


def test_seed_mismatch_names_variant_and_seeds():
    rows = [("base", s, "a", "binary", "auc", 0.7) for s in (1, 2, 3)]
    rows += [("new", s, "a", "binary", "auc", 0.7) for s in (1, 3, 5)]
    with pytest.raises(ValueError, match=r"variant 'new'.*missing \[2\], extra \[5\]"):
        paired_differences(table(rows), "base")


def test_unknown_baseline_lists_variants():
    with pytest.raises(ValueError, match=r"baseline variant 'nope'.*\['base', 'new'\]"):
        paired_differences(two_variants([1, 2], [2, 3]), "nope")


def test_holm_hand_values():
    p = [0.2, 0.01, 0.045, 0.04]
    # sorted 0.01, 0.04, 0.045, 0.2 -> 4·0.01, 3·0.04, max(2·0.045, 0.12), max(0.2, 0.12)
    assert adjust_pvalues(p, "holm") == pytest.approx([0.2, 0.04, 0.12, 0.12])


def test_bh_hand_values():
    p = [0.2, 0.01, 0.045, 0.04]
    # m/rank·p = 0.04, 0.08, 0.06, 0.2 -> running min from the largest: 0.04, 0.06, 0.06, 0.2
    assert adjust_pvalues(p, "bh") == pytest.approx([0.2, 0.04, 0.06, 0.06])


def test_adjust_caps_at_one_and_skips_nan():
    assert adjust_pvalues([0.5, 0.6], "holm") == pytest.approx([1.0, 1.0])
    out = adjust_pvalues([math.nan, 0.01, 0.02], "holm")  # family of 2, not 3
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.02])
    with pytest.raises(ValueError, match="'bonferroni'.*'bh', 'holm'"):
        adjust_pvalues([0.1], "bonferroni")


def test_metric_direction():
    assert metric_direction("auc") == 1 and metric_direction("top3") == 1
    assert metric_direction("ndcg@5") == 1 and metric_direction("logloss") == -1
    assert metric_direction("gini", {"gini": "higher"}) == 1
    with pytest.raises(ValueError, match="'gini'.*StudyMeta.directions"):
        metric_direction("gini")


def test_compare_direction_and_correction():
    seeds = list(range(5))
    rows = []
    for s in seeds:
        rows += [("base", s, "a", "binary", "auc", 0.70 + 0.01 * s),
                 ("new", s, "a", "binary", "auc", 0.75 + 0.01 * s + 0.001 * (s % 2)),
                 ("base", s, "a", "binary", "logloss", 0.50 + 0.01 * s),
                 ("new", s, "a", "binary", "logloss", 0.45 + 0.01 * s + 0.001 * (s % 2))]
    meta = StudyMeta("t", "base")
    out = compare(table(rows), meta).set_index("metric")
    assert out.loc["auc", "outcome"] == "better"  # higher auc
    assert out.loc["logloss", "outcome"] == "better"  # lower logloss
    assert out["p_adj"].tolist() == pytest.approx(adjust_pvalues(out["p_t"], "holm"))
    lines = verdict(out.reset_index(), meta)
    assert any("new is better than base on a/logloss" in x for x in lines)
    bh = compare(table(rows), StudyMeta("t", "base", correction="bh"))
    assert bh["p_adj"].tolist() == pytest.approx(adjust_pvalues(bh["p_t"], "bh"))


def test_single_seed_is_reported_untested():
    meta = StudyMeta("t", "base")
    out = compare(two_variants([0.70], [0.75]), meta)
    assert out["outcome"].tolist() == ["untested"] and not out["significant"].any()
    assert "could not be tested" in verdict(out, meta)[0]


def test_verdict_nothing_significant_gives_detectable_effect():
    meta = StudyMeta("t", "base")
    out = compare(two_variants([0.70, 0.72], [0.71, 0.72]), meta)
    (line,) = verdict(out, meta)
    assert line.startswith("No significant difference detected with n = 2 seeds")
    mde = float(line.split("about auc ")[1].split(" ")[0])
    assert 0 < mde < math.inf


def test_verdict_states_the_detectable_effect_next_to_significant_findings():
    seeds = range(5)
    rows = []
    for s in seeds:  # auc: a clear gain; pr_auc: noise around zero
        rows += [("base", s, "a", "binary", "auc", 0.70 + 0.01 * s), ("new", s, "a", "binary", "auc", 0.75 + 0.01 * s + 0.001 * (s % 2)),
                 ("base", s, "a", "binary", "pr_auc", 0.30), ("new", s, "a", "binary", "pr_auc", 0.30 + 0.01 * (-1) ** s)]
    meta = StudyMeta("t", "base")
    out = compare(table(rows), meta)
    lines = verdict(out, meta)
    assert lines[0].startswith("new is better than base on a/auc")
    expected = min_detectable_effect(out.set_index("metric").loc["pr_auc", "sd_diff"], 5, 0.05 / 2, 0.8)
    assert f"could detect is about pr_auc {expected:.3g}" in lines[1]


def test_min_detectable_effect_matches_the_power_formula():
    # (t_{0.975, 4} + t_{0.8, 4}) * sd / sqrt(5) = (2.7764 + 0.9410) * 0.02 / 2.2361
    assert min_detectable_effect(0.02, 5, 0.05, 0.8) == pytest.approx(0.033250, abs=1e-5)
    assert math.isnan(min_detectable_effect(0.02, 1, 0.05))
    assert min_detectable_effect(0.02, 10, 0.05) < min_detectable_effect(0.02, 5, 0.05)  # more seeds, smaller MDE


def test_per_type_average_never_mixes_types():
    rows = []
    for s in (0, 1):
        rows += [("v", s, "b1", "binary", "auc", 0.8 + 0.1 * s), ("v", s, "b2", "binary", "auc", 0.6),
                 ("v", s, "mc", "multiclass", "top3", 0.5), ("v", s, "ct", "contrastive", "top3", 0.9),
                 ("v", s, "r", "regression", "mae", 10.0)]
    out = per_type_seed_values(table(rows))
    got = out.set_index(["task_type", "metric", "seed"])["value"].to_dict()
    assert got == pytest.approx({("binary", "auc", 0): 0.7, ("binary", "auc", 1): 0.75,
                                 ("multiclass", "top3", 0): 0.5, ("multiclass", "top3", 1): 0.5,
                                 ("contrastive", "top3", 0): 0.9, ("contrastive", "top3", 1): 0.9,
                                 ("regression", "mae", 0): 10.0, ("regression", "mae", 1): 10.0})
    assert set(out.loc[out["task_type"] == "binary", "tasks"]) == {"b1,b2"}
    s = summarize(out, ["variant", "task_type", "metric"])
    assert len(s) == 4 and (s["n"] == 2).all()


def test_per_type_average_requires_same_tasks_every_seed():
    rows = [("v", 0, "b1", "binary", "auc", 0.8), ("v", 0, "b2", "binary", "auc", 0.6),
            ("v", 1, "b1", "binary", "auc", 0.8)]
    with pytest.raises(ValueError, match="task sets differ across seeds"):
        per_type_seed_values(table(rows))


def test_per_type_average_by_sweep_level():
    rows = [(v, c, s, t, "regression", "rmse", base + (0.1 if v == "sb" else 0.0) * (1 - c) + 0.01 * s)
            for v in ("st", "sb") for c in (0.0, 0.5) for s in (0, 1)
            for t, base in (("r1", 1.0), ("r2", 2.0))]
    df = pd.DataFrame(rows, columns=["variant", "correlation", "seed", "task", "task_type", "metric", "value"])
    out = per_type_seed_values(df, by=("correlation",))
    assert list(out.columns[:3]) == ["variant", "correlation", "seed"]
    got = out.set_index(["variant", "correlation", "seed"])["value"].to_dict()
    assert got[("sb", 0.0, 1)] == pytest.approx(1.5 + 0.1 + 0.01)   # mean of r1, r2 at that level
    assert got[("st", 0.5, 0)] == pytest.approx(1.5)
    assert set(out["n_tasks"]) == {2}


def test_validate_results_reports_all_problems():
    with pytest.raises(ValueError, match=r"missing columns \['task_type'\]"):
        validate_results(pd.DataFrame(columns=["variant", "seed", "task", "metric", "value"]))
    bad = pd.DataFrame([("v", 0, "a", "ranking", "auc", 0.7), ("v", 0, "a", "ranking", "auc", np.nan)],
                       columns=list(RESULT_COLUMNS))
    with pytest.raises(ValueError) as e:
        validate_results(bad)
    assert "non-finite" in str(e.value) and "duplicate" in str(e.value) and "'ranking'" in str(e.value)


def test_study_meta_validation():
    with pytest.raises(ValueError, match=r"alpha=1.5.*correction='fdr'"):
        StudyMeta("s", "b", alpha=1.5, correction="fdr")


def test_every_metric_with_a_direction_has_a_range():
    from ple_adatt.train.metrics import HIGHER_IS_BETTER

    assert set(HIGHER_IS_BETTER) <= set(METRIC_RANGES)
    assert all(lo < hi for lo, hi in METRIC_RANGES.values())
    assert metric_range("ndcg@5") == (0.0, 1.0) and metric_range("custom") == (-math.inf, math.inf)


def test_summarize_clips_intervals_to_the_metric_range():
    rows = [("v", s, t, tt, m, x) for t, tt, m, xs in (
        ("b", "binary", "pr_auc", (0.995, 1.0)),   # raw t-interval (df = 1) reaches ~1.03
        ("r", "regression", "mae", (0.01, 0.2)),   # raw interval reaches far below 0
        ("q", "regression", "r2", (0.95, 1.0)))    # r2 is at most 1, unbounded below
        for s, x in enumerate(xs)]
    s = summarize(table(rows), ["variant", "task", "metric"]).set_index("metric")
    raw = {m: mean_ci(x) for m, x in (("pr_auc", (0.995, 1.0)), ("mae", (0.01, 0.2)), ("r2", (0.95, 1.0)))}
    assert raw["pr_auc"][2] > 1.0 and raw["mae"][1] < 0.0 and raw["r2"][2] > 1.0  # the premise
    assert s.loc["pr_auc", "ci_high"] == 1.0 and s.loc["pr_auc", "ci_low"] == pytest.approx(raw["pr_auc"][1])
    assert s.loc["mae", "ci_low"] == 0.0 and s.loc["mae", "ci_high"] == pytest.approx(raw["mae"][2])
    assert s.loc["r2", "ci_high"] == 1.0 and s.loc["r2", "ci_low"] == pytest.approx(raw["r2"][1])
    assert s["mean"].to_dict() == pytest.approx({"pr_auc": 0.9975, "mae": 0.105, "r2": 0.975})  # means untouched
    unclipped = summarize(table(rows), ["variant", "task", "metric"], clip=None).set_index("metric")
    assert unclipped.loc["pr_auc", "ci_high"] == pytest.approx(raw["pr_auc"][2])


def test_differences_are_clipped_to_the_range_width_and_tests_are_unchanged():
    base, var = [0.1, 0.9], [0.9, 0.95]  # auc differences 0.8 and 0.05: raw CI about [-4.3, +5.2]
    out = paired_differences(two_variants(base, var), "base").iloc[0]
    raw = paired_test(np.subtract(var, base))
    assert raw["ci_low"] < -1 and raw["ci_high"] > 1
    assert (out["ci_low"], out["ci_high"]) == (-1.0, 1.0)
    assert out["p_t"] == pytest.approx(raw["p_t"]) and out["mean_diff"] == pytest.approx(raw["mean_diff"])
    mae = paired_differences(two_variants([1.0, 5.0], [3.0, 4.0], "r", "regression", "mae"), "base")
    assert (mae["ci_low"].iloc[0], mae["ci_high"].iloc[0]) == pytest.approx(
        (paired_test([2.0, -1.0])["ci_low"], paired_test([2.0, -1.0])["ci_high"]))  # unbounded: as is


def test_clip_ci_with_fixed_bounds_and_without_a_metric():
    t = pd.DataFrame({"ci_low": [-0.2, np.nan], "ci_high": [1.3, np.nan]})
    out = clip_ci(t, "value", (0.0, 1.0))
    assert out["ci_low"].iloc[0] == 0.0 and out["ci_high"].iloc[0] == 1.0 and out["ci_low"].isna().iloc[1]
    assert clip_ci(t, "value") is t  # no metric column, no bounds: nothing to clip to
