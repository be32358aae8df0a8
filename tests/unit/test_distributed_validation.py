"""Validation on N ranks gives the metrics of one rank over the same split (issue 14, item 6): every
batch is scored exactly once, by rank i % N, and the ranks' sufficient statistics and score
histograms are merged with one all-reduce (train/evaluate.validate_streaming, issue 16)."""
from __future__ import annotations

import math

import pyarrow.dataset as pads
import pytest
import torch

from ddp_harness import TINY_CONFIG, spawn

from ple_adatt.train.evaluate import predict_batches, validate_streaming

BATCH = 48  # 200 validation rows -> 5 batches: ranks score unequal numbers of them


def _setup(dataset, extra=()):
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.files import split_files
    from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
    from ple_adatt.launch.inference import to_tensors
    from ple_adatt.train.build import build_model

    cfg = load_config(TINY_CONFIG, [f"dataset={dataset}", "model.arch=ple_hetero", "model.experts.use=[mlp]", *extra])
    state = fit_preprocessing(cfg.dataset)
    table = pads.dataset(split_files(cfg.dataset, "val"), format="parquet").to_table()
    packed = to_tensors(Packer(cfg.dataset, state, cfg.task_names())(table))
    n = len(next(iter(packed.values())))
    batches = [{k: v[i:i + BATCH] for k, v in packed.items()} for i in range(0, n, BATCH)]
    torch.manual_seed(0)
    return cfg, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k), batches


def _metrics(cfg, preds) -> dict:
    from ple_adatt.train.calibration import calibration_metrics
    from ple_adatt.train.metrics import evaluate_predictions
    from ple_adatt.train.monitor import prediction_spreads
    from ple_adatt.train.step import validation_loss

    types = {t: cfg.dataset.task(t).type for t in cfg.task_names()}
    return {**validation_loss(cfg, preds), **evaluate_predictions(types, preds), **prediction_spreads(types, preds),
            **calibration_metrics(types, preds)}


def _rank(rank, world, cfg, model, batches):
    return validate_streaming(model, batches, cfg, torch.device("cpu"), rank, world)


@pytest.mark.parametrize("world,n_batches", [(2, None), (3, 2)])
def test_validation_on_n_ranks_equals_one_rank(tiny_dataset, world, n_batches):
    """(3, 2): a rank with no batch still joins the merge."""
    cfg, model, batches = _setup(tiny_dataset)
    batches = batches[:n_batches]
    assert len(batches) % world, "the split should not divide evenly across the ranks"
    one = validate_streaming(model, batches, cfg, torch.device("cpu"))
    exact = _metrics(cfg, predict_batches(model, batches, cfg.task_names(), torch.device("cpu"), cfg=cfg))
    assert one.keys() == exact.keys()  # streaming vs exact values: tests/unit/test_streaming_metrics.py
    ranks = spawn(_rank, world, cfg, model, batches)
    assert all(r == ranks[0] or _nan_equal(r, ranks[0]) for r in ranks)  # every rank holds the result
    many = ranks[0]
    assert one.keys() == many.keys() and len(one) > 10
    diff = {k: abs(one[k] - many[k]) for k in one if not (math.isnan(one[k]) and math.isnan(many[k]))}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}  # same sums, same order


def _nan_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_streaming_calibration_of_the_evidential_heads_equals_the_exact_metrics(tiny_dataset):
    """With evidential heads on, the loop's streaming validation reports the same calibration figures
    (evidential ECE, mean uncertainty, interval coverage and width) as train/calibration.py."""
    cfg, model, batches = _setup(tiny_dataset, ["model.evidential.enabled=true"])
    stream = validate_streaming(model, batches, cfg, torch.device("cpu"))
    exact = _metrics(cfg, predict_batches(model, batches, cfg.task_names(), torch.device("cpu"), cfg=cfg))
    assert {"click/evi_ece", "click/u_mean", "value/coverage", "value/interval_width"} <= exact.keys()
    assert stream.keys() == exact.keys()
    for k in exact:
        if k.endswith(("/u_mean", "/coverage", "/interval_width", "/ece", "/evi_ece", "/spread")):
            assert stream[k] == pytest.approx(exact[k], rel=1e-4, abs=1e-4), k
