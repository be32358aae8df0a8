"""GPU throughput mode (launch/benchmark.cuda_benchmark): runs only where CUDA is visible."""
from __future__ import annotations

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import fit_preprocessing
from ple_adatt.launch.benchmark import cuda_benchmark

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_benchmark_reports_throughput_and_memory_for_both_forms(synthetic_dataset):
    cfg = load_config("configs/experiments/synthetic_ple.yaml", [f"dataset={synthetic_dataset}"])
    out = cuda_benchmark(cfg, fit_preprocessing(cfg.dataset), batch_size=256, steps=3)
    assert out["amp"] == "bf16"
    for mode in ("looped", "batched"):
        assert out[f"{mode}_samples_per_s"] > 0 and out[f"{mode}_peak_gpu_mem_mb"] > 0
