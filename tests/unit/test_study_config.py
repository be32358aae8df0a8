"""Ablation study configs (validated before Ray starts) and the MLflow -> report path (no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ple_adatt.config.loading import ConfigError
from ple_adatt.launch.ablate import (
    GRID_FILE,
    KIND_TAG,
    META_TAG,
    REPORT_DIR_TAG,
    STUDY_KIND,
    STUDY_TAG,
    TASK_TYPES_TAG,
    check_same_grid,
    prepare_study,
    regenerate_report,
    study_grid,
    study_meta,
)
from ple_adatt.launch.ablate import load_study
from ple_adatt.launch.trial import build_trial_config
from ple_adatt.report.results import metric_rows, results_table
from ple_adatt.report import SECTIONS

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs/smoke/tiny.yaml")


def _study(tmp_path: Path, **over) -> Path:
    doc = {"name": "s", "base": SMOKE, "variants": {"ple": [], "mmoe": ["model.arch=mmoe"]},
           "baseline": "ple", "seeds": [0, 1]}
    doc.update(over)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _problems(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        prepare_study(path, list(overrides))
    return str(e.value)


def test_valid_study_builds_every_variant_with_its_seed(tmp_path):
    st = prepare_study(_study(tmp_path), ["train.epochs=1"])
    assert st.num_runs() == 4 and st.base_cfg.train.epochs == 1
    assert st.run_cfgs[("mmoe", None)].model.arch == "mmoe"
    from ple_adatt.launch.ablate import _spec

    cfg, tags = build_trial_config(_spec(st.config, st.base, str(tmp_path)), {"variant": "mmoe", "seed": 1})
    assert cfg.train.seed == 1 and cfg.model.arch == "mmoe" and cfg.run.storage_path == str(tmp_path)
    assert tags["variant"] == "mmoe" and tags["seed"] == "1"
    assert json.loads(tags[TASK_TYPES_TAG]) == {"click": "binary", "stage": "multiclass", "value": "regression"}


def test_every_bad_variant_is_reported_by_name(tmp_path):
    msg = _problems(_study(tmp_path, variants={"ple": [], "bad_arch": ["model.arch=transformer"],
                                               "bad_key": ["model.nope=1"], "bad_loss": ["tasks.value.loss=bce"]}))
    assert "variants.bad_arch: model.arch" in msg and "'transformer'" in msg
    assert "variants.bad_key: model.nope: unknown key" in msg
    assert "variants.bad_loss" in msg and "does not fit a regression task" in msg
    assert "variants.ple" not in msg


@pytest.mark.parametrize("over,needle", [
    ({"baseline": "nope"}, "baseline: 'nope' is not a variant"),
    ({"seeds": [0]}, "need at least 2 seeds"),
    ({"seeds": [1, 1, 2]}, "duplicate seeds"),
    ({"variants": {"ple": []}}, "variants: Dictionary should have at least 2 items"),
    ({"metrics": {"binary": ["auc", "accuracy"]}}, "metrics.binary: ['accuracy'] not reported for binary tasks"),
    ({"variants": {"ple": [], "click_only": ["active_tasks=[click]"]}}, "variants must train the same tasks"),
    ({"correction": "bonferroni"}, "correction"),
    ({"variants": {"ple": [], "a b": []}}, "variants.a b: names use letters"),
    ({"overrides": ["train.checkpoint_metric=val/los"]}, "train.checkpoint_metric='val/los' is not a metric"),
])
def test_bad_studies_fail_before_ray(tmp_path, over, needle):
    assert needle in _problems(_study(tmp_path, **over))


def test_sweep_levels_are_checked_once_and_relative_to_the_study_file(tmp_path, tiny_dataset):
    (tmp_path / "sub").mkdir()
    good = str(Path("..") / Path(*tiny_dataset.parts[-2:]))  # tmp/<tiny>/dataset.yaml from tmp/sub
    import shutil

    shutil.copytree(tiny_dataset.parent, tmp_path / tiny_dataset.parent.name, dirs_exist_ok=True)
    doc = {"name": "s", "base": SMOKE, "variants": {"ple": [], "mmoe": ["model.arch=mmoe"]}, "baseline": "ple",
           "seeds": [0, 1], "sweep": {"levels": {0.0: [f"dataset={good}"], 0.5: ["dataset=../missing/dataset.yaml"]}}}
    path = tmp_path / "sub" / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    msg = _problems(path)
    assert msg.count("file not found") == 1 and "sweep.levels.0.5" in msg
    doc["sweep"]["levels"][0.5] = [f"dataset={good}"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    st = prepare_study(path)
    assert st.num_runs() == 8 and Path(st.run_cfgs[("mmoe", 0.5)].dataset.splits.train).is_absolute()


def test_metric_rows_and_sweep_split():
    m = {"val/click/auc": 0.7, "val/click/oracle_gap_auc": 0.1, "val/click/pr_auc": float("nan"),
         "val/value/mae": 1.2, "val/value/rmse": 1.5}
    types = {"click": "binary", "value": "regression"}
    rows = metric_rows("ple", 0, None, m, types, {"binary": ["auc", "pr_auc"], "regression": ["mae"]})
    assert [(r["task"], r["metric"]) for r in rows] == [("click", "auc"), ("value", "mae")]  # NaN dropped
    assert rows[0]["oracle_gap"] == 0.1 and pd.isna(rows[1]["oracle_gap"])
    meta = {"name": "s", "variants": ["ple", "mmoe"], "sweep": "correlation", "reference": 0.5}
    rows = [r for lv in (0.0, 0.5) for v in ("mmoe", "ple") for s in (0, 1)
            for r in metric_rows(v, s, lv, m, types, {"binary": ["auc"]})]
    main, sweep = results_table(rows, meta)
    assert list(dict.fromkeys(main["variant"])) == ["ple", "mmoe"] and len(main) == 4
    assert set(sweep["correlation"]) == {0.0, 0.5} and len(sweep) == 8 and "level" not in main


def test_report_is_regenerated_from_mlflow_child_runs(tmp_path):
    """Fake a finished study in a local MLflow store, then rebuild the report from it alone."""
    from ple_adatt.tracking import mlflow_tracking as mt

    uri = mt.resolve_tracking_uri(None, str(tmp_path))
    st = load_study(_study(tmp_path))
    meta = study_meta(st)
    parent, _ = mt.start_run(uri, "exp", "study-s", {}, tags={
        KIND_TAG: STUDY_KIND, STUDY_TAG: "s", META_TAG: json.dumps(meta), REPORT_DIR_TAG: str(tmp_path / "rep")})
    types = {"click": "binary", "stage": "multiclass", "value": "regression"}
    for v, shift in (("ple", 0.0), ("mmoe", 0.02)):
        for seed in (0, 1, 2):
            rid, _ = mt.start_run(uri, "exp", f"s-{v}-{seed}", {"train.seed": seed}, parent_run_id=parent,
                                  tags={"variant": v, "seed": str(seed), TASK_TYPES_TAG: json.dumps(types)})
            log = mt.RunLogger(uri, rid)
            for epoch in (0, 1):  # the report uses the final epoch
                base = 0.6 + 0.05 * epoch + 0.01 * seed + shift
                log.log_metrics({"val/click/auc": base, "val/click/pr_auc": base - 0.1,
                                 "val/click/oracle_gap_auc": 0.9 - base, "val/stage/accuracy": base - 0.2,
                                 "val/stage/macro_f1": base - 0.25, "val/value/mae": 2 - base,
                                 "val/value/rmse": 2.5 - base}, step=epoch)
            log.finish("FINISHED")
    # an unfinished run of the same study is ignored
    rid, _ = mt.start_run(uri, "exp", "s-ple-9", {}, parent_run_id=parent,
                          tags={"variant": "ple", "seed": "9", TASK_TYPES_TAG: json.dumps(types)})
    files = regenerate_report("s", uri)
    md = files["report.md"].read_text()
    for section in ("Summary", "Verdict", "Per-task results", "Paired differences vs baseline",
                    "Per-type averages", "Oracle gaps", "Plots", "Method"):
        assert section in SECTIONS and f"## {section}" in md, section
    res = pd.read_csv(files["results.csv"])
    assert sorted(res["seed"].unique()) == [0, 1, 2] and len(res) == 2 * 3 * 6
    assert res.loc[(res.variant == "ple") & (res.seed == 0) & (res.metric == "auc"), "value"].item() == pytest.approx(0.65)
    assert files["report.html"].is_file() and files["report.md"].parent == tmp_path / "rep"
    with pytest.raises(ValueError, match="no ablation study named 'other'"):
        regenerate_report("other", uri)


@pytest.mark.parametrize("path", sorted((ROOT / "configs/ablation").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_start_with_a_comment_and_validate(path):
    text = path.read_text()
    assert text.startswith("# ") and "Launch: python jobs/ablate.py --config" in text and "Override example" in text
    st = load_study(path)  # the study schema itself always validates
    assert st.baseline in st.variants and len(st.seeds) >= 5
    try:
        prepare_study(path)
    except ConfigError as e:
        # Allowed only: datasets that must be generated first (commands in the YAML or its base).
        assert all("file not found" in p and "/data/" in p for p in e.problems), e.problems


def test_resuming_a_study_whose_design_changed_is_refused(tmp_path):
    path = _study(tmp_path)
    first = study_grid(prepare_study(path, []))
    exp = tmp_path / "runs" / "s"
    exp.mkdir(parents=True)
    (exp / GRID_FILE).write_text(json.dumps(first))
    check_same_grid(exp, study_grid(prepare_study(path, [])), str(path))          # same design: resumes
    check_same_grid(tmp_path / "runs" / "new", first, str(path))                    # nothing recorded: new study
    with pytest.raises(ConfigError) as e:
        check_same_grid(exp, study_grid(prepare_study(path, ["seeds=[0,1,2]"])), str(path))
    assert "seeds: [0, 1] -> [0, 1, 2]" in str(e.value) and "name=<new name>" in str(e.value)
    with pytest.raises(ConfigError, match=r"\(base changed\)"):
        check_same_grid(exp, study_grid(prepare_study(path, ["train.epochs=1"])), str(path))
