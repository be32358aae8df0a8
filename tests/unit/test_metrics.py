import math

import numpy as np

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
