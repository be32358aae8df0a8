"""Label statistics, standardised regression targets and prior output biases (data/targets.py)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import split_files
from ple_adatt.data.preprocess import Packer, PreprocessState, fit_preprocessing, input_shapes
from ple_adatt.data.targets import output_bias, rare_task_advice, to_original_units
from ple_adatt.model.towers import TaskTower
from ple_adatt.train.build import build_model

SMOKE = "configs/smoke/tiny.yaml"


@pytest.fixture(scope="module")
def tiny(tiny_dataset):
    cfg = load_config(SMOKE, [f"dataset={tiny_dataset}"])
    state = fit_preprocessing(cfg.dataset)
    table = pads.dataset(split_files(cfg.dataset, "train"), format="parquet").to_table()
    return cfg, state, table


def test_label_stats_are_the_train_split_statistics(tiny):
    cfg, state, table = tiny
    y = table.column("y_click").to_numpy(zero_copy_only=False).astype(float)
    assert math.isclose(state.targets["click"]["rate"], np.nanmean(y))
    stage = table.column("y_stage").drop_null().to_numpy()
    assert np.allclose(state.targets["stage"]["prior"], np.bincount(stage, minlength=3) / len(stage))
    v = table.column("y_value").drop_null().to_numpy().astype(float)
    assert math.isclose(state.targets["value"]["mean"], v.mean(), rel_tol=1e-9)
    assert math.isclose(state.targets["value"]["std"], v.std(), rel_tol=1e-9)
    # JSON round trip (the checkpoint's preprocess.json)
    assert PreprocessState.from_dict(state.to_dict()).targets == state.targets


def test_regression_labels_are_packed_standardised_and_mapped_back(tiny):
    cfg, state, table = tiny
    packed = Packer(cfg.dataset, state, cfg.task_names())(table)
    mask = packed["mask/value"]
    z = packed["label/value"][mask]
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    preds = {"value": {"logits": z, "label": z, "mask": mask[mask]},
             "click": {"logits": packed["label/click"], "label": packed["label/click"], "mask": packed["mask/click"]}}
    back = to_original_units(preds, state.targets)
    raw = table.column("y_value").drop_null().to_numpy()
    assert np.allclose(back["value"]["label"], raw, atol=1e-4) and np.allclose(back["value"]["logits"], raw, atol=1e-4)
    assert back["click"] is preds["click"]  # binary outputs are left alone


def test_output_bias_formulas():
    assert np.allclose(output_bias({"type": "binary", "n": 10, "rate": 0.01}, 1), [math.log(0.01 / 0.99)])
    b = output_bias({"type": "multiclass", "n": 10, "prior": [0.5, 0.25, 0.25]}, 3)
    assert np.allclose(np.exp(b) / np.exp(b).sum(), [0.5, 0.25, 0.25]) and abs(b.sum()) < 1e-12
    assert np.allclose(output_bias({"type": "multiclass", "n": 10, "prior": [1.0, 0.0]}, 2),
                       np.log([1.0, 1e-4]) - np.log([1.0, 1e-4]).mean())  # an absent class stays finite
    assert np.allclose(output_bias({"type": "regression", "n": 5, "mean": 3.0, "std": 2.0}, 1), [0.0])
    assert output_bias({"type": "binary", "n": 0, "rate": math.nan}, 1) is None
    assert output_bias({"type": "contrastive", "n": 4}, 7) is None


@pytest.mark.parametrize("arch", ["shared_bottom", "single_task", "mmoe", "ple", "ple_hetero", "adatt_fusion"])
def test_every_arch_starts_at_the_train_prior(tiny, arch):
    cfg, state, table = tiny
    extra = ["model.experts.use=[mlp]"] if arch == "ple_hetero" else []
    cfg = _with_arch(cfg, arch, extra)
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)
    heads = {n.rsplit(".", 1)[-1]: m.head for n, m in model.named_modules() if isinstance(m, TaskTower)}
    assert set(heads) == {"click", "stage", "value"}
    rate = state.targets["click"]["rate"]
    assert torch.allclose(heads["click"].bias, torch.tensor([math.log(rate / (1 - rate))]))
    prior = torch.softmax(heads["stage"].bias, 0).double()
    assert torch.allclose(prior, torch.tensor(state.targets["stage"]["prior"], dtype=torch.float64), atol=1e-6)
    assert torch.equal(heads["value"].bias, torch.zeros(1))


def _with_arch(cfg, arch, extra):
    from ple_adatt.config.loading import apply_overrides, validate

    return validate(apply_overrides(cfg.model_dump(mode="json"), [f"model.arch={arch}", *extra], []))


def test_rare_tasks_are_named_with_the_option_that_fits():
    targets = {"fraud": {"type": "binary", "n": 1000, "rate": 0.01}, "click": {"type": "binary", "n": 1000, "rate": 0.3},
               "rare_focal": {"type": "binary", "n": 1000, "rate": 0.02}, "value": {"type": "regression", "n": 9}}
    lines = rare_task_advice(targets, {"fraud": "bce", "click": "bce", "rare_focal": "focal", "value": "mse"}, {})
    assert len(lines) == 2
    assert "task 'fraud': positives are 1.00% of train rows" in lines[0]
    assert "tasks.fraud.loss=focal or tasks.fraud.pos_weight=99" in lines[0]
    assert "handled with loss=focal" in lines[1]
    assert rare_task_advice({"x": {"type": "binary", "n": 10, "rate": 0.99}}, {"x": "bce"}, {})[0].startswith(
        "task 'x': negatives are 1.00%")


def test_gbdt_baseline_sees_the_model_features_and_reports_the_model_metric_names(tiny):
    """launch/baseline.py without Ray: the packed feature matrix and one LightGBM task per type."""
    from ple_adatt.launch.baseline import comparison_lines, feature_matrix, fit_one_task

    cfg, state, table = tiny
    data = {s: feature_matrix(cfg, state, s) for s in ("train", "val")}
    tr = data["train"]
    # 3 numeric + 2 categorical codes + a [5, 2] sequence flattened
    assert tr["X"].shape == (table.num_rows, 3 + 2 + 10) and len(tr["names"]) == 15
    assert [tr["names"][i] for i in tr["categorical"]] == ["cat.cat.0", "cat.cat.1"]
    raw = table.column("y_value").to_numpy(zero_copy_only=False)
    assert np.allclose(tr["label/value"][tr["mask/value"]], raw[~np.isnan(raw)], atol=1e-4)  # original units
    out = {t: fit_one_task(t, cfg.dataset.task(t).type, cfg.dataset.task(t).num_classes, data,
                            max_rounds=40)["metrics"]
           for t in ("click", "stage", "value")}
    assert {"val/click/auc", "val/click/oracle_gap_auc", "val/click/logloss"} <= set(out["click"])
    assert {"val/stage/accuracy", "val/stage/macro_f1"} <= set(out["stage"])
    assert {"val/value/rmse", "val/value/r2"} <= set(out["value"])
    assert 0.5 < out["click"]["val/click/auc"] <= 1.0
    lines = comparison_lines({"click/auc": 0.7, "click/n": 10}, out["click"], "val")
    assert lines[1].startswith("click/auc") and f"{out['click']['val/click/auc']:.6f}" in lines[1]
