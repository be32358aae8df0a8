"""The --adatt-only benchmark (no Ray): model size, per-1k-sample cost and adaTT overheads in one dict."""
from __future__ import annotations

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import DataError
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.launch.benchmark import run_benchmark
from ple_adatt.train.build import build_model


def test_adatt_only_benchmark_reports_size_cost_and_overheads(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.batch_size=64"])
    out = run_benchmark(cfg, epochs=1, only_adatt=True)
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    assert out["parameters"] == sum(p.numel() for p in model.parameters())
    assert 0 < out["shared_parameters"] < out["parameters"]
    per_1k = 1000 * out["adatt_step_s"]["off"]["cpu"] / 64
    assert out["off_cpu_s_per_1k_samples"] == pytest.approx(per_1k, abs=1e-3)  # both rounded to 4 places
    assert {"params_gi10", "heads_gi10"} <= set(out["adatt_overhead"])
    assert all(torch.isfinite(torch.tensor(v)) for v in out["adatt_overhead"].values())


def test_adatt_benchmark_needs_one_full_batch(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.batch_size=100000"])
    with pytest.raises(DataError, match="fewer than train.batch_size=100000"):
        run_benchmark(cfg, epochs=1, only_adatt=True)
