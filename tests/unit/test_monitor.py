"""Collapse flags and early stopping (train/monitor.py): pure functions, plus the 2-rank decision."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ple_adatt.train.monitor import (SPREAD_MIN, collapse_flags, collapsed_tasks, flagged_from_metrics,
                                     prediction_spread, prediction_spreads, shared_decision, should_stop)


def test_issue_17_collapse_is_flagged_and_a_trained_rare_task_is_not():
    rng = np.random.default_rng(0)
    # the reported collapse: probabilities 0.01198-0.01256 (std 8.7e-5), val AUC 0.4998
    p = rng.uniform(0.01198, 0.01256, 5000)
    collapsed = np.log(p / (1 - p))
    healthy = rng.normal(-4.6, 0.8, 5000)  # a 1 % task whose logits vary
    preds = {t: {"logits": z, "label": np.zeros(5000), "mask": np.ones(5000, bool)}
             for t, z in (("fraud", collapsed), ("churn", healthy))}
    m = {f"val/{k}": v for k, v in prediction_spreads({"fraud": "binary", "churn": "binary"}, preds).items()}
    assert m["val/fraud/spread"] < SPREAD_MIN and m["val/churn/spread"] > 0.5
    m.update({"val/fraud/auc": 0.4998, "val/churn/auc": 0.71})
    flags = collapsed_tasks({"fraud": "binary", "churn": "binary"}, m)
    assert set(flags) == {"fraud"}
    assert "spread" in flags["fraud"] and "auc 0.500 within 0.02 of 0.5" in flags["fraud"]
    m.update(collapse_flags({"fraud": "binary", "churn": "binary"}, m))
    assert m["val/fraud/collapsed"] == 1.0 and m["val/churn/collapsed"] == 0.0
    assert flagged_from_metrics(m) == ["fraud"]


def test_auc_near_half_alone_flags_and_regression_uses_the_standardised_spread():
    assert collapsed_tasks({"b": "binary"}, {"val/b/spread": 1.0, "val/b/auc": 0.515}) == {
        "b": "auc 0.515 within 0.02 of 0.5"}
    assert collapsed_tasks({"b": "binary"}, {"val/b/spread": 1.0, "val/b/auc": 0.53}) == {}
    assert collapsed_tasks({"b": "binary"}, {"val/b/spread": 1.0, "val/b/auc": math.nan}) == {}
    assert prediction_spread("regression", np.array([0.0, 0.02, -0.02, 0.01])) < SPREAD_MIN
    r = collapsed_tasks({"r": "regression"}, {"val/r/spread": 0.01, "val/r/auc": 0.5})  # no AUC rule for regression
    assert r == {"r": f"spread 0.01 < {SPREAD_MIN:g}"}


def test_multiclass_spread_ignores_a_constant_shift_of_the_logits():
    rng = np.random.default_rng(1)
    z = np.tile(np.log([0.6, 0.3, 0.1]), (100, 1))
    assert prediction_spread("multiclass", z + rng.normal(size=(100, 1))) < 1e-9  # same probabilities per row
    assert prediction_spread("multiclass", z + rng.normal(size=(100, 3))) > 0.5


@pytest.mark.parametrize("values, mode, patience, min_delta, stop", [
    ([1.0, 0.9, 0.8], "min", 2, 0.0, False),        # still improving
    ([1.0, 0.9, 0.95, 0.92], "min", 2, 0.0, True),   # 2 epochs without beating 0.9
    ([1.0, 0.9, 0.95, 0.89], "min", 2, 0.0, False),  # the last one improved
    ([1.0, 0.9, 0.95, 0.89], "min", 2, 0.02, True),  # ... but by less than min_delta
    ([0.6, 0.7, 0.69, 0.7], "max", 2, 0.0, True),
    ([0.6, 0.7], "max", 2, 0.0, False),              # not enough epochs yet
])
def test_should_stop(values, mode, patience, min_delta, stop):
    history = [{"val/loss": v} for v in values]
    assert should_stop(history, "val/loss", mode, patience, min_delta) is stop


def test_epochs_without_the_metric_never_count_as_improvements():
    history = [{"val/loss": 1.0}, {}, {"val/loss": math.nan}]
    assert should_stop(history, "val/loss", "min", 2) is True
    assert should_stop([{}, {}, {}], "val/loss", "min", 2) is False


def _decide(rank, world):
    # only rank 0 has validation metrics: rank 1 passes the opposite decision, and must follow rank 0
    return [shared_decision(rank == 0, world), shared_decision(rank != 0, world)]


def test_two_ranks_stop_at_the_same_epoch():
    from ddp_harness import spawn

    assert spawn(_decide, 2) == [[True, False], [True, False]]
    assert shared_decision(True, 1) is True


def test_evaluate_and_predict_pick_the_best_checkpoint_of_a_run(tmp_path):
    import json

    from ple_adatt.launch.inference import resolve_checkpoint

    run = tmp_path / "run"
    for name in ("epoch_0001", "epoch_0003"):
        (run / name).mkdir(parents=True)
        (run / name / "state.pt").write_bytes(b"")
    (run / "best_checkpoint.json").write_text(json.dumps({"best": str(run / "epoch_0001"),
                                                          "latest": str(run / "epoch_0003")}))
    assert resolve_checkpoint(str(run)) == str(run / "epoch_0001")
    assert resolve_checkpoint("best", str(run)) == str(run / "epoch_0001")
    assert resolve_checkpoint("last", str(run)) == str(run / "epoch_0003")
    assert resolve_checkpoint(str(run / "epoch_0003")) == str(run / "epoch_0003")
    with pytest.raises(ValueError, match="--checkpoint best needs --run"):
        resolve_checkpoint("best")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        resolve_checkpoint(str(tmp_path))


def test_results_rows_carry_the_collapse_flag():
    from ple_adatt.report.results import metric_rows

    m = {"val/click/auc": 0.5, "val/click/collapsed": 1.0, "val/value/rmse": 1.0, "val/value/collapsed": 0.0}
    rows = metric_rows("v", 0, None, m, {"click": "binary", "value": "regression"},
                       {"binary": ["auc"], "regression": ["rmse"]})
    assert [(r["task"], r["collapsed"]) for r in rows] == [("click", True), ("value", False)]
