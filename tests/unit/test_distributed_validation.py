"""Validation on N ranks gives the metrics of one rank over the same split (issue 14, item 6): every
batch is scored exactly once, by rank i % N, and the predictions are merged on rank 0."""
from __future__ import annotations

import math

import pyarrow.dataset as pads
import pytest
import torch

from ddp_harness import TINY_CONFIG, spawn

from ple_adatt.train.evaluate import predict_batches

BATCH = 48  # 200 validation rows -> 5 batches: ranks score unequal numbers of them


def _setup(dataset):
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.files import split_files
    from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
    from ple_adatt.launch.inference import to_tensors
    from ple_adatt.train.build import build_model

    cfg = load_config(TINY_CONFIG, [f"dataset={dataset}", "model.arch=ple_hetero", "model.experts.use=[mlp]"])
    state = fit_preprocessing(cfg.dataset)
    table = pads.dataset(split_files(cfg.dataset, "val"), format="parquet").to_table()
    packed = to_tensors(Packer(cfg.dataset, state, cfg.task_names())(table))
    n = len(next(iter(packed.values())))
    batches = [{k: v[i:i + BATCH] for k, v in packed.items()} for i in range(0, n, BATCH)]
    torch.manual_seed(0)
    return cfg, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k), batches


def _metrics(cfg, preds) -> dict:
    from ple_adatt.train.metrics import evaluate_predictions
    from ple_adatt.train.step import validation_loss

    types = {t: cfg.dataset.task(t).type for t in cfg.task_names()}
    return {**validation_loss(cfg, preds), **evaluate_predictions(types, preds)}


def _rank(rank, world, cfg, model, batches):
    from ple_adatt.train.evaluate import predict_distributed

    preds = predict_distributed(model, batches, cfg.task_names(), torch.device("cpu"), rank, world, cfg=cfg)
    return _metrics(cfg, preds) if rank == 0 else None


@pytest.mark.parametrize("world", [2, 3])
def test_validation_on_n_ranks_equals_one_rank(tiny_dataset, world):
    cfg, model, batches = _setup(tiny_dataset)
    assert len(batches) % world, "the split should not divide evenly across the ranks"
    one = _metrics(cfg, predict_batches(model, batches, cfg.task_names(), torch.device("cpu"), cfg=cfg))
    many = spawn(_rank, world, cfg, model, batches)[0]
    assert one.keys() == many.keys() and len(one) > 10
    diff = {k: abs(one[k] - many[k]) for k in one if not (math.isnan(one[k]) and math.isnan(many[k]))}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}  # same rows, same order
