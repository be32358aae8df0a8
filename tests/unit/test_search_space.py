"""Campaign search spaces and objectives: validated before Ray starts (no Ray here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.launch.trial import TrialSpec, build_trial_config, decode_choice, encode_choice
from ple_adatt.launch.search_space import DefineByRun, base_point
from ple_adatt.launch.sweep import concurrency_reason, derive_max_concurrent, known_metrics, split_cli_overrides
from ple_adatt.launch.tune import prepare_campaign
from ple_adatt.report.tune_summary import best_config_yaml, pareto_front
from ple_adatt.train.metrics import metric_mode

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs/smoke/tiny.yaml")


def _campaign(tmp_path: Path, **over) -> Path:
    doc = {"name": "t", "base": SMOKE,
           "search_space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
           "budget": {"num_trials": 4}, "objective": {"metric": "val/loss"}}
    doc.update(over)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _problems(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        prepare_campaign(path, list(overrides))
    return str(e.value)


CONDITIONAL = {
    "model.arch": {"type": "categorical", "choices": ["ple", "mmoe", "shared_bottom"]},
    "model.num_levels": {"type": "int", "low": 1, "high": 3, "when": {"model.arch": "ple"}},
    "tasks.click.loss": {"type": "categorical", "choices": ["bce", "focal"]},
    "tasks.click.focal_alpha": {"type": "float", "low": 0.1, "high": 0.9, "when": {"tasks.click.loss": "focal"}},
    "tasks.click.focal_gamma": {"type": "float", "low": 0.5, "high": 3.0, "when": {"tasks.click.loss": "focal"}},
    "model.expert_hidden": {"type": "categorical", "choices": [[16, 8], [32, 16]]},
}


def test_define_by_run_samples_conditionals_only_when_active(tmp_path):
    c = prepare_campaign(_campaign(tmp_path, search_space=CONDITIONAL))
    space = DefineByRun(dict(c.config.search_space))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        t = study.ask()
        space(t)
        p = t.params
        assert ("model.num_levels" in p) == (p["model.arch"] == "ple")
        assert ("tasks.click.focal_alpha" in p) == ("tasks.click.focal_gamma" in p) == (p["tasks.click.loss"] == "focal")
        seen.add((p["model.arch"], p["tasks.click.loss"]))
        # every sample turns into a valid experiment through the trial driver
        spec = TrialSpec(name="t", base=c.base, train_storage=str(tmp_path))
        cfg, tags = build_trial_config(spec, dict(p))
        assert cfg.model.arch == p["model.arch"] and cfg.model.expert_hidden in ([16, 8], [32, 16])
        if p["tasks.click.loss"] == "focal":
            assert cfg.task_settings("click").focal_alpha == pytest.approx(p["tasks.click.focal_alpha"])
        study.tell(t, 0.0)
    assert len(seen) == 6  # all combinations were reached


def test_list_choices_round_trip_through_optuna_encoding():
    for v in ([16, 8], {"name": "dwa", "temperature": 2.0}, 3, "ple", None):
        assert decode_choice(encode_choice(v)) == v
    assert encode_choice([1, 2]).startswith("json:")


def test_bad_search_spaces_report_every_problem_at_once(tmp_path):
    bad = {
        "model.no_such_key": {"type": "float", "low": 0.0, "high": 1.0},
        "model.arch": {"type": "categorical", "choices": []},
        "train.lr": {"type": "float", "low": 0.1, "high": 0.01},
        "train.epochs": {"type": "int", "low": 3, "high": 3},
    }
    msg = _problems(_campaign(tmp_path, search_space=bad, budget={"num_trials": 0},
                              objective={"metric": ["val/loss", "val/click/auc"]},
                              scheduler={"name": "asha"}))
    for needle in ("search_space.model.arch", "at least 1 item", "search_space.train.lr",
                   "low (0.1) must be < high (0.01)", "low (3) must be < high (3)", "budget.num_trials",
                   "greater than or equal to 1", "scheduler: a scheduler (ASHA) needs a single objective"):
        assert needle in msg, (needle, msg)


def test_nonexistent_path_and_invalid_choice_are_caught_against_the_schema(tmp_path):
    space = {"model.no_such_key": {"type": "float", "low": 0.0, "high": 1.0},
             "tasks.value.loss": {"type": "categorical", "choices": ["huber", "bce"]},
             "model.dropout": {"type": "float", "low": 0.0, "high": 1.5},
             "tasks.nope.weight": {"type": "float", "low": 0.5, "high": 2.0}}
    msg = _problems(_campaign(tmp_path, search_space=space))
    assert "search_space.model.no_such_key: no such config key" in msg
    assert "search_space.tasks.value.loss: value 'bce'" in msg and "does not fit a regression task" in msg
    assert "search_space.model.dropout: value 1.5" in msg
    assert "search_space.tasks.nope.weight" in msg and "no such task" in msg
    assert "value 'huber'" not in msg  # only the bad choice is reported


def test_conditions_must_refer_to_earlier_categoricals_and_their_choices(tmp_path):
    space = {"model.num_levels": {"type": "int", "low": 1, "high": 2, "when": {"model.arch": "ple"}},
             "model.arch": {"type": "categorical", "choices": ["ple", "mmoe"]},
             "model.num_experts": {"type": "int", "low": 2, "high": 4, "when": {"model.arch": "moe"}}}
    msg = _problems(_campaign(tmp_path, search_space=space))
    assert "search_space.model.num_levels.when: 'model.arch' must be a parameter listed before" in msg
    space.pop("model.num_levels")
    msg = _problems(_campaign(tmp_path, search_space=space))
    assert "search_space.model.num_experts.when.model.arch: 'moe' is not one of its choices" in msg


@pytest.mark.parametrize("metric,hint", [
    ("val/stage/auc", "task 'stage' is multiclass"),
    ("val/avg/contrastive/accuracy", "per-type averages here"),
    ("val/nope/mae", "tasks: ['click', 'stage', 'value']"),
    ("val/value/oracle_gap_rmse", "task 'value' is regression"),  # value has no oracle column
])
def test_objective_metric_must_be_reported_by_the_experiment(tmp_path, metric, hint):
    msg = _problems(_campaign(tmp_path, objective={"metric": metric}))
    assert f"objective.metric: '{metric}' is not reported" in msg and hint in msg


def test_known_metrics_and_derived_modes():
    cfg = load_config(SMOKE)
    known = known_metrics(cfg)
    for m in ("val/loss", "val/click/auc", "val/click/oracle_gap_auc", "val/stage/macro_f1", "val/value/rmse",
              "val/avg/binary/auc", "val/avg/regression/mae"):
        assert m in known
    assert "val/stage/auc" not in known and "val/avg/contrastive/accuracy" not in known
    assert [metric_mode(m) for m in ("val/loss", "val/click/auc", "val/value/mae", "val/click/logloss",
                                     "val/click/oracle_gap_auc", "val/x/oracle_gap_rmse")] == \
        ["min", "max", "min", "min", "min", "min"]


def test_mode_must_match_metric_shape(tmp_path):
    msg = _problems(_campaign(tmp_path, objective={"metric": ["val/loss", "val/click/auc"], "mode": "min"}))
    assert "one mode per metric" in msg


def test_cli_overrides_split_between_campaign_and_experiment(tmp_path):
    own, exp = split_cli_overrides(["budget.num_trials=2", "train.epochs=3", "dataset=x.yaml", "name=b"],
                                   {"budget", "name", "objective"})
    assert own == ["budget.num_trials=2", "name=b"] and exp == ["train.epochs=3", "dataset=x.yaml"]
    c = prepare_campaign(_campaign(tmp_path), ["budget.num_trials=2", "train.epochs=4"])
    assert c.config.budget.num_trials == 2 and c.base_cfg.train.epochs == 4


def test_base_point_enqueues_the_base_values_inside_the_space(tmp_path):
    c = prepare_campaign(_campaign(tmp_path, search_space=CONDITIONAL))
    point = base_point(c.config.search_space, c.base_cfg)
    # tiny.yaml: arch ple, num_levels 1 (default), click loss default bce -> focal params inactive
    assert point["model.arch"] == "ple" and point["model.num_levels"] == 1
    assert point["tasks.click.loss"] == "bce" and "tasks.click.focal_alpha" not in point
    assert decode_choice(point["model.expert_hidden"]) == [32, 16]


def test_max_concurrent_is_derived_from_resources_and_capped():
    cfg = load_config(SMOKE, ["scaling.num_workers=2", "scaling.cpus_per_worker=1"])
    assert derive_max_concurrent({"CPU": 16.0}, cfg, 100, None) == 4   # (16 - 1.6) // 3
    assert derive_max_concurrent({"CPU": 16.0}, cfg, 2, None) == 2     # never more than the trials
    assert derive_max_concurrent({"CPU": 16.0}, cfg, 100, 1) == 1      # budget.max_concurrent caps it
    with pytest.raises(ValueError, match="one trial needs"):
        derive_max_concurrent({"CPU": 2.0}, cfg, 4, None)
    gpu = load_config(SMOKE, ["scaling.use_gpu=true", "scaling.gpus_per_worker=1"])
    assert derive_max_concurrent({"CPU": 64.0, "GPU": 2.0}, gpu, 10, None) == 2


def test_concurrency_message_says_why_and_what_would_run_all():
    cfg = load_config(SMOKE, ["scaling.num_workers=2", "scaling.cpus_per_worker=1"])
    msg = concurrency_reason({"CPU": 4.0}, cfg, 8, None, derive_max_concurrent({"CPU": 4.0}, cfg, 8, None))
    assert msg == ("running 1 trial(s) at once: the cluster has 4 CPUs, 1 kept for Ray Data, and one trial takes 3 "
                   "(1 Tune driver + scaling.num_workers=2 x cpus_per_worker=1); 27 CPUs would run all 8 at once")
    for want in (1, 3, 8):  # the CPUs it names are the fewest that run every trial at once (README's sizing rule)
        need = int(concurrency_reason({"CPU": 1.0}, cfg, want, None, 0).split("; ")[-1].split()[0])
        assert derive_max_concurrent({"CPU": float(need)}, cfg, want, None) == want
        if want > 1:
            assert derive_max_concurrent({"CPU": float(need - 1)}, cfg, want, None) < want
        else:
            with pytest.raises(ValueError, match="one trial needs"):
                derive_max_concurrent({"CPU": float(need - 1)}, cfg, want, None)
    assert concurrency_reason({"CPU": 40.0}, cfg, 8, 2, 2).endswith("(capped by max_concurrent=2)")


def test_pareto_front_keeps_only_non_dominated_completed_trials():
    df = pd.DataFrame({"trial_id": list("abcde"), "status": ["completed"] * 4 + ["error"],
                       "auc": [0.8, 0.7, 0.75, 0.7, 0.99], "mae": [1.0, 0.5, 1.2, 0.6, 0.1]})
    front = pareto_front(df, ["auc", "mae"], ["max", "min"])
    assert sorted(front["trial_id"]) == ["a", "b"]


def test_best_config_yaml_is_a_ready_to_run_experiment(tmp_path):
    c = prepare_campaign(_campaign(tmp_path, search_space=CONDITIONAL))
    text = best_config_yaml(c, {"model.arch": "mmoe", "tasks.click.loss": "focal", "tasks.click.focal_alpha": 0.4,
                                "model.expert_hidden": [16, 8]}, "t-best", ["Best trial of t", "Launch: ..."])
    assert text.startswith("# Best trial of t\n# Launch")
    path = tmp_path / "best.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.model.arch == "mmoe" and cfg.task_loss("click") == "focal" and cfg.run.name == "t-best"
    assert cfg.task_settings("click").focal_alpha == 0.4 and cfg.model.expert_hidden == [16, 8]


@pytest.mark.parametrize("path", sorted((ROOT / "configs/tune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_campaigns_start_with_a_comment_and_validate(path):
    text = path.read_text()
    assert text.startswith("# ") and "Launch: python jobs/tune.py --config" in text and "Override example" in text
    try:
        c = prepare_campaign(path)
    except ConfigError as e:
        # Allowed only: the generated dataset of the base experiment is missing on a fresh clone
        # (tests/unit/test_configs.py validates these campaigns against a stand-in dataset).
        assert all("file not found" in p and "/data/" in p for p in e.problems), e.problems
        return
    assert c.config.budget.num_trials >= 1


class _FakeResult:
    """The parts of a ray.tune.Result the summary reads."""

    def __init__(self, tid, config, history, error=None):
        self.config, self.error, self.path = config, error, f"/nowhere/{tid}"
        self.metrics_dataframe = pd.DataFrame(history)
        self.metrics = {**history[-1], "trial_id": tid} if history else {"trial_id": tid}


def test_multi_objective_summary_writes_pareto_set_study_and_plots(tmp_path):
    import optuna

    from ple_adatt.report.tune_summary import write_summary

    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "model.arch": {"type": "categorical", "choices": ["ple", "mmoe"]}}
    c = prepare_campaign(_campaign(tmp_path, search_space=space, budget={"num_trials": 5},
                                   objective={"metric": ["val/avg/binary/auc", "val/value/mae"]}),
                         ["train.epochs=2"])
    assert c.modes == ["max", "min"]
    rng = np.random.default_rng(0)
    results = []
    for i, (auc, mae) in enumerate([(0.70, 1.0), (0.75, 1.2), (0.65, 0.8), (0.60, 1.3)]):
        cfg = {"train.lr": float(10 ** rng.uniform(-4, -2)), "model.arch": ["ple", "mmoe"][i % 2]}
        hist = [{"training_iteration": e + 1, "val/avg/binary/auc": auc - 0.1 * (1 - e), "val/value/mae": mae}
                for e in range(2)]
        results.append(_FakeResult(f"t{i}", cfg, hist))
    results.append(_FakeResult("t4", {"train.lr": 1e-3, "model.arch": "ple"}, [], error=RuntimeError("boom")))
    out = write_summary(c, results, tmp_path / "exp" / "summary")
    assert sorted(out.pareto["trial_id"]) == ["t0", "t1", "t2"]          # t3 is dominated, t4 failed
    assert list(out.trials["status"]) == ["completed"] * 4 + ["error"]
    summary = Path(out.summary_dir)
    for f in ("pareto.csv", "best_config.yaml", "summary.md", "optimization_history.png", "parallel_coordinate.png",
              "pareto_front.png"):
        assert (summary / f).is_file(), f
    assert sorted(p.stem for p in (summary / "pareto").glob("*.yaml")) == ["t0", "t1", "t2"]
    for p in (summary / "pareto").glob("*.yaml"):
        load_config(p)  # each Pareto member is a runnable experiment
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{summary / 'optuna.db'}")
    assert len(study.trials) == 5 and len(study.best_trials) == 3
    assert [t.state.name for t in study.trials].count("FAIL") == 1
    # writing the summary again (a resumed campaign) replaces the study rather than duplicating trials
    write_summary(c, results, tmp_path / "exp" / "summary")
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{summary / 'optuna.db'}").trials) == 5


def test_set_path_creates_mappings_and_indexes_existing_lists():
    from ple_adatt.config.paths import get_path, set_path

    d = {"model": {"logit_transfer": {"edges": [{"source": "a", "target": "b"}]}}}
    out = set_path(d, "model.logit_transfer.edges.0.strength", 0.3)
    assert out["model"]["logit_transfer"]["edges"][0] == {"source": "a", "target": "b", "strength": 0.3}
    assert "strength" not in d["model"]["logit_transfer"]["edges"][0]  # the input is not modified
    assert set_path({}, "tasks.click.focal_alpha", 0.2) == {"tasks": {"click": {"focal_alpha": 0.2}}}
    assert get_path(out, "model.logit_transfer.edges.0.strength") == 0.3
    with pytest.raises(KeyError, match="not an index"):
        set_path(d, "model.logit_transfer.edges.3.strength", 0.3)
    with pytest.raises(KeyError, match="not a mapping"):
        set_path({"train": {"lr": 1.0}}, "train.lr.x", 1)
