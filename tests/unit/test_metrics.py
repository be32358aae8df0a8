import math

import numpy as np
import pytest

from ple_adatt.train.metrics import evaluate_predictions, task_metrics


def test_binary_metrics_and_oracle_gap():
    y = np.array([0, 0, 1, 1])
    logits = np.array([-2.0, 1.0, 0.5, 2.0])  # one inversion -> AUC 0.75
    oracle = np.array([0.1, 0.2, 0.8, 0.9])  # perfect ranking -> AUC 1
    m = task_metrics("binary", logits, y, oracle)
    assert math.isclose(m["auc"], 0.75) and math.isclose(m["oracle_auc"], 1.0)
    assert math.isclose(m["oracle_gap_auc"], 0.25)


def test_multiclass_and_regression():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]))
    m = task_metrics("multiclass", logits, np.array([0, 2, 1]))
    assert math.isclose(m["accuracy"], 2 / 3) and m["top3"] == 1.0
    r = task_metrics("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert math.isclose(r["mae"], 2 / 3) and math.isclose(r["rmse"], math.sqrt(4 / 3))


def test_oracle_gap_is_positive_when_the_model_is_worse_for_every_metric():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    r = task_metrics("regression", np.array([0.5, 1.5, 1.5, 3.5]), y, oracle=y + 0.1)
    for k in ("mae", "rmse", "r2"):
        assert r[f"oracle_gap_{k}"] > 0, k  # worse model: larger error, lower R², all positive gaps
    assert math.isclose(r["oracle_gap_rmse"], r["rmse"] - r["oracle_rmse"])
    assert math.isclose(r["oracle_gap_r2"], r["oracle_r2"] - r["r2"])
    b = task_metrics("binary", np.array([2.0, -2.0]), np.array([0, 1]), oracle=np.array([0.2, 0.8]))
    assert b["oracle_gap_auc"] > 0 and b["oracle_gap_logloss"] > 0


def test_per_type_averages_never_mix_types_and_masks_apply():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    preds = {
        "a": {"logits": rng.normal(size=100), "label": y, "mask": np.ones(100, bool)},
        "b": {"logits": rng.normal(size=100), "label": y, "mask": np.r_[np.ones(50, bool), np.zeros(50, bool)]},
        "r": {"logits": rng.normal(size=100), "label": rng.normal(size=100), "mask": np.ones(100, bool)},
    }
    out = evaluate_predictions({"a": "binary", "b": "binary", "r": "regression"}, preds)
    assert out["b/n"] == 50
    assert math.isclose(out["avg/binary/auc"], (out["a/auc"] + out["b/auc"]) / 2)
    assert "avg/regression/auc" not in out and "avg/binary/rmse" not in out


def test_metric_registry_matches_what_the_evaluator_reports():
    """METRICS_BY_TYPE lists exactly what evaluate_predictions emits per type (oracles and per-type
    averages included), and every emitted name has a direction."""
    from ple_adatt.train.metrics import METRICS_BY_TYPE, metric_mode

    rng = np.random.default_rng(0)
    n = 50
    types = {"b": "binary", "m": "multiclass", "c": "contrastive", "r": "regression"}
    preds = {
        "b": {"logits": rng.normal(size=n), "label": rng.integers(0, 2, n).astype(float),
              "oracle": rng.uniform(size=n)},
        "m": {"logits": rng.normal(size=(n, 4)), "label": rng.integers(0, 4, n), "oracle": np.full((n, 4), 0.25)},
        "c": {"logits": rng.normal(size=(n, 5)), "label": rng.integers(0, 5, n)},
        "r": {"logits": rng.normal(size=n), "label": rng.normal(size=n), "oracle": rng.normal(size=n)},
    }
    for p in preds.values():
        p["mask"] = np.ones(n, bool)
    out = evaluate_predictions(types, preds)
    assert set(METRICS_BY_TYPE) == set(types.values())
    for task, ttype in types.items():
        names = METRICS_BY_TYPE[ttype]
        reported = {k.split("/", 1)[1] for k in out if k.startswith(f"{task}/") and k != f"{task}/n"}
        oracle = {f"oracle_{m}" for m in names} | {f"oracle_gap_{m}" for m in names} if "oracle" in preds[task] else set()
        assert reported == set(names) | oracle, ttype
        assert {k.rsplit("/", 1)[1] for k in out if k.startswith(f"avg/{ttype}/")} == set(names), ttype
    for k in out:
        if not k.endswith("/n"):
            assert metric_mode(f"val/{k}") in ("max", "min"), k


def test_metric_mode_of_full_names():
    from ple_adatt.train.metrics import metric_mode

    names = ("val/loss", "val/avg/binary/auc", "val/value/mae", "val/click/logloss", "val/click/oracle_gap_auc",
             "val/x/oracle_gap_rmse", "val/x/oracle_rmse", "train/loss", "val/stage/top3")
    assert [metric_mode(m) for m in names] == ["min", "max", "min", "min", "min", "min", "min", "min", "max"]
    with pytest.raises(ValueError, match="unknown metric direction for 'gini'.*'auc'"):
        metric_mode("val/x/gini")


def test_report_defaults_are_reported_metrics():
    from ple_adatt.train.metrics import METRICS_BY_TYPE, REPORT_METRICS_BY_TYPE

    assert REPORT_METRICS_BY_TYPE.keys() == METRICS_BY_TYPE.keys()
    for task_type, names in REPORT_METRICS_BY_TYPE.items():
        assert names and set(names) <= set(METRICS_BY_TYPE[task_type]), task_type
