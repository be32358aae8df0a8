"""Throughput benchmark: the same model, batch size and data through four paths, in one run.

(a) plain single-process PyTorch over in-memory tensors, (b) Ray Train with 1 worker, (c) with 2
workers, (d) Ray Data ingest alone (iterating packed batches, no model). Steady-state figures
skip the first epoch of every path (process start-up, pipeline warm-up, allocator growth).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import DataError, check_dataset, parquet_dataset, split_files
from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
from ple_adatt.launch.inference import to_tensors
from ple_adatt.train.build import build_adatt, build_model, build_optimizer, build_weighting
from ple_adatt.train.step import Trainer
from ple_adatt.train.trainable import TrainableSet, begin_epoch, phase_optimizer


def load_train_tensors(cfg: ExperimentConfig, state) -> dict[str, torch.Tensor]:
    spec, tasks = cfg.dataset, cfg.task_names()
    cols = list(dict.fromkeys(spec.input_columns() + [spec.task(t).label for t in tasks]))
    table = parquet_dataset(split_files(spec, "train")).to_table(columns=cols)
    return to_tensors(Packer(spec, state, tasks)(table))


def plain_loop(cfg: ExperimentConfig, state, epochs: int) -> list[float]:
    """Reference: one process, tensors in memory, the worker's own step (train/step.py: weighting,
    adaTT, regularisers, finite check) and its phase-1 optimizer and schedule."""
    torch.manual_seed(cfg.train.seed)
    data = load_train_tensors(cfg, state)
    n, bs = len(next(iter(data.values()))), cfg.train.batch_size
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    opt, sched = phase_optimizer(cfg, model, weighting, adatt, 1, -(-n // bs))
    trainer = Trainer(cfg, model, model, weighting, adatt, opt, sched)
    trainable = TrainableSet(model, lambda m: m)  # one process: nothing to wrap
    rates, step, phase = [], 0, 1
    for epoch in range(epochs):
        phase, _ = begin_epoch(trainer, trainable, epoch, phase, -(-n // bs))
        model.train()
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            trainer.step({k: v[idx] for k, v in data.items()}, step)
            step += 1
        rates.append(n / (time.perf_counter() - t0))
    return rates


def adatt_step_times(cfg: ExperimentConfig, state, steps: int = 44) -> dict[str, dict[str, float]]:
    """Mean seconds per training step on the same batches, {mode: {"wall": s, "cpu": s}}: adaTT off,
    and on (dynamic phase) measuring affinity on all shared-expert parameters, the experts' output
    heads or the shared representation, every 1 or 10 steps. A mean, not a median: the measuring
    steps are the cost being measured. "cpu" is this process's CPU time, which other load on the
    machine barely moves when torch runs one thread (the benchmark's default)."""
    data = load_train_tensors(cfg, state)
    n, bs = len(next(iter(data.values()))), cfg.train.batch_size
    if n < bs:
        raise DataError([f"adaTT step benchmark: the train split has {n} rows, fewer than train.batch_size={bs}"])
    # Full batches only, so that every step costs the same and per-sample figures are exact.
    batches = [{k: v[i:i + bs] for k, v in data.items()} for i in range(0, min(n, bs * steps) - bs + 1, bs)]
    modes = {"off": None, "params_gi1": ("parameters", 1), "params_gi10": ("parameters", 10),
             "heads_gi1": ("expert_heads", 1), "heads_gi10": ("expert_heads", 10),
             "repr_gi1": ("representation", 1), "repr_gi10": ("representation", 10)}
    out = {}
    for name, mode in modes.items():
        c = cfg
        if mode is not None:
            c = cfg.model_copy(update={"adatt": cfg.adatt.model_copy(update={
                "enabled": True, "affinity_on": mode[0], "grad_interval": mode[1]})})
        torch.manual_seed(0)
        model = build_model(c, input_shapes(c.dataset, state), state.cluster_k)
        if mode and mode[0] == "representation" and not hasattr(model, "shared_representation"):
            continue
        weighting, adatt = build_weighting(c), build_adatt(c)
        extras = [m for m in (weighting, adatt) if m is not None]
        opt = build_optimizer(c, list(model.parameters()) + [p for m in extras for p in m.parameters()])
        trainer = Trainer(c, model, model, weighting, adatt, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
        if adatt is not None:
            adatt.on_epoch_start(1, 3)  # 3-epoch schedule: epoch 1 is the dynamic phase
        times, cpu = [], []
        for step, batch in enumerate((batches * (steps // len(batches) + 1))[:steps]):
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.step(batch, step)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        skip = 4 if len(times) > 8 else 0  # first steps: warm-up
        out[name] = {"wall": statistics.fmean(times[skip:]), "cpu": statistics.fmean(cpu[skip:])}
    return out


def ray_train_rates(cfg: ExperimentConfig, workers: int, name: str) -> list[float]:
    import ray.train

    from ple_adatt.launch.fit import fit

    c = cfg.model_copy(update={
        "scaling": cfg.scaling.model_copy(update={"num_workers": workers}),
        "tracking": cfg.tracking.model_copy(update={"enabled": False}),
        "run": cfg.run.model_copy(update={"name": name, "max_failures": 0}),
    })
    res = fit(c, verbose=False)
    from ray.train import Result

    df = Result.from_path(res.run_dir).metrics_dataframe
    return [float(x) for x in df["train/samples_per_s"]]


def ingest_rates(cfg: ExperimentConfig, state, epochs: int) -> list[float]:
    from ple_adatt.launch.fit import build_datasets

    ds = build_datasets(cfg, state, splits=("train",))["train"]
    if cfg.train.cache_train:
        ds = ds.materialize()
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for b in ds.iter_torch_batches(batch_size=cfg.train.batch_size, prefetch_batches=2,
                                       local_shuffle_buffer_size=cfg.train.shuffle_buffer or None):
            n += len(next(iter(b.values())))
        rates.append(n / (time.perf_counter() - t0))
    return rates


def steady(rates: list[float]) -> float:
    return float(statistics.median(rates[1:] if len(rates) > 1 else rates))


def adatt_overheads(cfg: ExperimentConfig, state, threads: int) -> dict:
    """adaTT step times and overheads vs adaTT off (CPU-time based, wall time alongside)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step = adatt_step_times(cfg, state)
    finally:
        torch.set_num_threads(prev)
    off = step["off"]
    return {"adatt_step_s": step, "off_cpu_s_per_1k_samples": 1000.0 * off["cpu"] / cfg.train.batch_size,
            "adatt_overhead": {k: v["cpu"] / off["cpu"] - 1.0 for k, v in step.items() if k != "off"},
            "adatt_overhead_wall": {k: v["wall"] / off["wall"] - 1.0 for k, v in step.items() if k != "off"}}


def model_size(cfg: ExperimentConfig, state) -> dict[str, int]:
    """Trainable parameters of the configured model: all, and those in the shared experts."""
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    count = lambda ps: sum(p.numel() for p in ps if p.requires_grad)  # noqa: E731
    return {"parameters": count(model.parameters()), "shared_parameters": count(model.shared_parameters())}


def run_benchmark(cfg: ExperimentConfig, epochs: int, tag: str = "bench", only_adatt: bool = False) -> dict:
    from ple_adatt.launch.fit import ensure_ray

    rows = check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())
    state = fit_preprocessing(cfg.dataset)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    # Ray gives each worker OMP/torch threads = its CPUs; the reference loop gets the same, so the
    # ratio measures the platform's overhead rather than a thread-count difference.
    threads = max(1, int(cfg.scaling.cpus_per_worker))
    if only_adatt:
        out = {"model": cfg.model.arch, **model_size(cfg, state), "batch_size": cfg.train.batch_size,
               "torch_threads_per_worker": threads}
        return _rounded({**out, **adatt_overheads(cfg, state, threads)})
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain = plain_loop(cfg, state, epochs)
    finally:
        torch.set_num_threads(prev)
    ensure_ray(2 * cfg.scaling.cpus_per_worker + 2)  # room for the 2-worker run plus Ray Data
    ingest = ingest_rates(cfg, state, epochs)
    ray1 = ray_train_rates(cfg, 1, f"{tag}-ray1")
    ray2 = ray_train_rates(cfg, 2, f"{tag}-ray2")
    out = {
        "model": cfg.model.arch, **model_size(cfg, state), "batch_size": cfg.train.batch_size,
        "train_rows": rows["train"], "epochs": epochs,
        "torch_threads_per_worker": threads, "cache_train": cfg.train.cache_train,
        "plain_samples_per_s": steady(plain), "ray1_samples_per_s": steady(ray1),
        "ray2_samples_per_s": steady(ray2), "ingest_rows_per_s": steady(ingest),
        "per_epoch": {"plain": plain, "ray1": ray1, "ray2": ray2, "ingest": ingest},
    }
    out["ratio_ray1_vs_plain"] = out["ray1_samples_per_s"] / out["plain_samples_per_s"]
    out["ratio_ray2_vs_plain"] = out["ray2_samples_per_s"] / out["plain_samples_per_s"]
    out["ratio_ingest_vs_consumption"] = out["ingest_rows_per_s"] / out["ray1_samples_per_s"]
    out.update(adatt_overheads(cfg, state, threads))
    return _rounded(out)


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x
