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


def test_step_time_mode_reports_both_forms_and_their_ratio(tiny_dataset):
    from ple_adatt.launch.benchmark import step_time_modes

    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.arch=ple_hetero",
                                                  "model.experts.use=[mlp]", "train.batch_size=32"])
    out = step_time_modes(cfg, fit_preprocessing(cfg.dataset), steps=1, rounds=1)
    assert out["steps_per_mode"] == 1
    assert out["ratio_looped_vs_batched"]["cpu"] == pytest.approx(
        out["looped_step_s"]["cpu"] / out["batched_step_s"]["cpu"], rel=1e-2, abs=1e-3)
    plain = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}"])  # arch ple: nothing stacked
    with pytest.raises(ValueError, match="no stacked per-task blocks"):
        step_time_modes(plain, fit_preprocessing(plain.dataset), steps=1, rounds=1)


def test_auc_error_mode_compares_histogram_and_exact_auc(tiny_dataset):
    from ple_adatt.launch.benchmark import histogram_auc_error

    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.batch_size=64"])
    out = histogram_auc_error(cfg, fit_preprocessing(cfg.dataset), train_steps=2)
    assert out["per_task"] and out["max_abs_diff_auc"] <= out["max_bound"] + 1e-9


def test_rss_sampler_sees_this_process_and_its_children():
    import subprocess
    import sys

    from ple_adatt.launch.memory import TreeRssSampler

    child = subprocess.Popen([sys.executable, "-c", "import time; b = b\"x\" * (200 * 2**20); time.sleep(1.5)"])
    with TreeRssSampler(interval=0.1) as rss:
        child.wait()
    peaks = rss.peaks_mb()
    assert peaks["tree"] >= 200 and peaks["root"] > 0  # the child's 200 MiB counted
    assert peaks["workers"] == 0  # no Ray worker here


def test_tree_memory_counts_shared_pages_once():
    """A process and its fork both reading the same 200 MiB of shared memory (as Ray workers read
    the object store): the tree's figure is PSS, so it stays near 200 MiB where an RSS sum says 400+."""
    import subprocess
    import sys

    from ple_adatt.launch.memory import TreeRssSampler, process_tree, rss_bytes

    code = """
import mmap, os, sys, time
m = mmap.mmap(-1, 200 * 2**20)          # anonymous and shared: the fork sees the same pages
for _ in range(200):
    m.write(b"x" * 2**20)
if os.fork() == 0:
    _ = m[::4096]                        # the fork touches every page: resident in both
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    time.sleep(5); os._exit(0)
time.sleep(5.5)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        sampler = TreeRssSampler(root=proc.pid)
        sampler.sample()
        tree_mb = sampler.peaks_mb()["tree"]
        rss_sum_mb = sum(rss_bytes(p) for p in process_tree(proc.pid)) / 2**20
    finally:
        proc.kill()
        proc.wait()
    assert rss_sum_mb >= 400, rss_sum_mb          # what an RSS sum would report
    assert 200 <= tree_mb < 300, tree_mb           # the shared pages once, plus two small interpreters
