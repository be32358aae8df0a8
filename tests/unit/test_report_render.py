"""The ablation report: every section in fixed order, embedded plots, no external assets."""
import re

import numpy as np
import pandas as pd
import pytest

from ple_adatt.report import SECTIONS, AdattDiagnostics, StudyMeta, write_report
from ple_adatt.report.stats import RESULT_COLUMNS

TASKS = [("churn", "binary", ("auc", "logloss")), ("nba", "multiclass", ("accuracy", "top3")),
         ("ltv", "regression", ("mae",))]


def results(variants=("ple", "ple_adatt"), seeds=(0, 1), oracle=True):
    rng = np.random.default_rng(0)
    rows = [(v, s, t, tt, m, 0.7 + 0.01 * i + 0.01 * rng.standard_normal(),
             0.05 if oracle and t == "churn" else np.nan)
            for i, v in enumerate(variants) for s in seeds for t, tt, ms in TASKS for m in ms]
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
