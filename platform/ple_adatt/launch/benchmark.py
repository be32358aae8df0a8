"""Throughput benchmark: the same model, batch size and data through several paths, in one run.

(a) plain single-process PyTorch over in-memory tensors (the worker's own Trainer.step and per-step
bookkeeping, run as a Ray task so it has a Train worker's priority and thread settings), (b) Ray
Train with 1 worker, (c) with 2 workers, both on the cached train split, (d) 1 worker streaming the
split from parquet every epoch, (e) Ray Data ingest alone (cached and streaming; no model).
Steady-state figures skip the first epoch of every path (process start-up, pipeline warm-up,
allocator growth); every epoch is listed under per_epoch. Peak RSS of the driver, of its whole
process tree and of the Ray worker processes comes from /proc (launch/memory.py).

Other modes: ``step_time_modes`` (looped vs stacked per-task layers, no Ray), ``scale_benchmark``
(one streaming epoch at two dataset sizes, jobs/train.py in a subprocess each), ``cuda_benchmark``
(GPU: bf16 autocast, pinned memory, prefetch, large batch).
"""
from __future__ import annotations

import os
import re
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


def plain_loop(cfg: ExperimentConfig, state, epochs: int, threads: int | None = None) -> list[float]:
    """Reference: one process, tensors in memory, the worker's own step (train/step.py: weighting,
    adaTT, regularisers, finite check), its phase-1 optimizer and schedule, and its per-step
    bookkeeping (loss read-back, skipped-batch count, the epoch-end weighting hook)."""
    if threads:
        torch.set_num_threads(threads)
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
        loss_sums, batches, skipped = dict.fromkeys(cfg.task_names(), 0.0), 0, 0
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            out = trainer.step({k: v[idx] for k, v in data.items()}, step)
            step += 1
            if not out.finite:
                skipped += 1
                continue
            batches += 1
            for t, loss in out.losses.items():
                loss_sums[t] += loss.item()
            for v in out.terms.values():
                float(v)
        rates.append(n / (time.perf_counter() - t0))
        weighting.on_epoch_end({t: v / max(1, batches) for t, v in loss_sums.items()})
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


def ray_train_rates(cfg: ExperimentConfig, workers: int, name: str, cache_train: bool) -> list[float]:
    """train/samples_per_s of every epoch, from the history the run's last checkpoint carries (Ray's
    metrics_dataframe keeps only run.checkpoints_to_keep epochs)."""
    from ple_adatt.launch.fit import fit
    from ple_adatt.train.checkpoint import load_state

    c = cfg.model_copy(update={
        "scaling": cfg.scaling.model_copy(update={"num_workers": workers}),
        "tracking": cfg.tracking.model_copy(update={"enabled": False}),
        "run": cfg.run.model_copy(update={"name": name, "max_failures": 0}),
        "train": cfg.train.model_copy(update={"cache_train": cache_train}),
    })
    res = fit(c, verbose=False)
    history = load_state(res.checkpoint_path)["history"]
    return [float(h["train/samples_per_s"]) for h in history]


def ingest_rates(cfg: ExperimentConfig, state, epochs: int, cache_train: bool) -> list[float]:
    from ple_adatt.launch.fit import build_datasets

    ds = build_datasets(cfg, state, splits=("train",))["train"]
    if cache_train:
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


def run_benchmark(cfg: ExperimentConfig, epochs: int, tag: str = "bench", only_adatt: bool = False,
                  adatt: bool = True) -> dict:
    import ray

    from ple_adatt.launch.fit import ensure_ray
    from ple_adatt.launch.memory import TreeRssSampler, niceness

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
    # One name per invocation: a second benchmark in this checkout must not resume the first's runs.
    tag = f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    ensure_ray(2 * cfg.scaling.cpus_per_worker + 2)  # room for the 2-worker run plus Ray Data
    with TreeRssSampler() as rss:
        # The plain loop as a Ray task: the same scheduling priority and thread settings as a Train worker.
        task = ray.remote(num_cpus=cfg.scaling.cpus_per_worker)(_plain_in_task)
        plain, plain_nice = ray.get(task.remote(cfg, state, epochs, threads))
        ingest = ingest_rates(cfg, state, epochs, cache_train=True)
        ingest_stream = ingest_rates(cfg, state, epochs, cache_train=False)
        ray1 = ray_train_rates(cfg, 1, f"{tag}-ray1", cache_train=True)
        ray1_stream = ray_train_rates(cfg, 1, f"{tag}-ray1-stream", cache_train=False)
        ray2 = ray_train_rates(cfg, 2, f"{tag}-ray2", cache_train=True)
    out = {
        "model": cfg.model.arch, **model_size(cfg, state), "batch_size": cfg.train.batch_size,
        "train_rows": rows["train"], "epochs": epochs,
        "torch_threads_per_worker": threads, "cache_train": True, "run_tag": tag,
        "plain_samples_per_s": steady(plain), "ray1_samples_per_s": steady(ray1),
        "ray2_samples_per_s": steady(ray2), "ingest_rows_per_s": steady(ingest),
        "ray1_stream_samples_per_s": steady(ray1_stream), "ingest_stream_rows_per_s": steady(ingest_stream),
        "per_epoch": {"plain": plain, "ray1": ray1, "ray2": ray2, "ingest": ingest, "ray1_stream": ray1_stream,
                      "ingest_stream": ingest_stream},
        "nice": {"driver": niceness(os.getpid()), "plain_task": plain_nice, "ray_workers": sorted(rss.worker_nice)},
        "peak_rss_mb": {"driver": rss.peaks_mb()["root"], "tree": rss.peaks_mb()["tree"],
                        "workers": rss.peaks_mb()["workers"]},
    }
    out["ratio_ray1_vs_plain"] = out["ray1_samples_per_s"] / out["plain_samples_per_s"]
    out["ratio_ray2_vs_plain"] = out["ray2_samples_per_s"] / out["plain_samples_per_s"]
    out["ratio_ray1_stream_vs_plain"] = out["ray1_stream_samples_per_s"] / out["plain_samples_per_s"]
    out["ratio_ingest_vs_consumption"] = out["ingest_rows_per_s"] / out["ray1_samples_per_s"]
    out["ratio_ingest_vs_consumption_stream"] = out["ingest_stream_rows_per_s"] / out["ray1_stream_samples_per_s"]
    if adatt:
        out.update(adatt_overheads(cfg, state, threads))
    return _rounded(out)


def _plain_in_task(cfg: ExperimentConfig, state, epochs: int, threads: int) -> tuple[list[float], int | None]:
    from ple_adatt.launch.memory import niceness

    return plain_loop(cfg, state, epochs, threads), niceness(os.getpid())


def step_time_modes(cfg: ExperimentConfig, state, steps: int = 12, rounds: int = 3, threads: int = 1) -> dict:
    """Seconds per training step (Trainer.step: forward, losses, backward, AdamW) of the configured
    model with its per-task layers looped vs stacked (model/layers.set_batched), same weights, same
    batches; rounds alternate the two forms so machine load hits both alike. CPU time of this
    process (``threads`` torch threads) and wall time; the ratio is looped / stacked."""
    from ple_adatt.model.layers import set_batched

    data = load_train_tensors(cfg, state)
    bs = cfg.train.batch_size
    batches = [{k: v[i * bs:(i + 1) * bs] for k, v in data.items()} for i in range(4)]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    trainers = {}
    for mode in ("looped", "batched"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
        if set_batched(model, mode == "batched") == 0:
            raise ValueError(f"model.arch={cfg.model.arch} has no stacked per-task blocks to compare")
        weighting = build_weighting(cfg)
        opt = build_optimizer(cfg, list(model.parameters()) + list(weighting.parameters()))
        trainers[mode] = Trainer(cfg, model, model, weighting, None, opt,
                                 torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
        trainers[mode].step(batches[0], 0)  # warm-up: allocator, first-call costs
    times = {m: {"wall": [], "cpu": []} for m in trainers}
    try:
        for _ in range(rounds):
            for mode, trainer in trainers.items():
                for step in range(steps):
                    t0, c0 = time.perf_counter(), time.process_time()
                    trainer.step(batches[step % len(batches)], step)
                    times[mode]["wall"].append(time.perf_counter() - t0)
                    times[mode]["cpu"].append(time.process_time() - c0)
    finally:
        torch.set_num_threads(prev)
    out = {"model": cfg.model.arch, "batch_size": bs, "torch_threads": threads, "steps_per_mode": steps * rounds}
    for mode, t in times.items():
        out[f"{mode}_step_s"] = {"wall": statistics.median(t["wall"]), "cpu": statistics.median(t["cpu"])}
    out["ratio_looped_vs_batched"] = {k: out["looped_step_s"][k] / out["batched_step_s"][k] for k in ("wall", "cpu")}
    return _rounded(out)


def _rounded(x):
    """Floats to 6 significant digits (decimal places would erase millisecond step times)."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


SAMPLES_LINE = re.compile(r"\[ple-adatt\] epoch (\d+)/\d+ \| ([\d,]+) samples/s")


def scale_benchmark(config: str, overrides: list[str], datasets: dict[int, str], workers: int = 2,
                    storage: str | None = None) -> dict:
    """One streaming epoch (train.cache_train=false, cache_val=auto) with ``workers`` Train workers
    per dataset size, each in its own `jobs/train.py` process (a fresh driver, so its peak is its
    own): samples/s (the loop's epoch line), peak RSS of the driver and of its whole process tree
    (Ray included, sampled from /proc), and whether Ray reported object-store spilling.
    ``datasets``: rows -> dataset.yaml path; generate them first (jobs/generate_data.py)."""
    import subprocess
    import sys
    from pathlib import Path

    from ple_adatt.launch.memory import TreeRssSampler

    job = Path(__file__).resolve().parents[3] / "jobs" / "train.py"
    tag = f"scale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    out: dict = {"workers": workers, "sizes": {}}
    for rows, yaml_path in sorted(datasets.items()):
        cmd = [sys.executable, str(job), "--config", config, *overrides, f"dataset={yaml_path}", "train.epochs=1",
               f"scaling.num_workers={workers}", "train.cache_train=false", "tracking.enabled=false",
               f"run.name={tag}-{rows}", *([f"run.storage_path={storage}"] if storage else [])]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with TreeRssSampler(interval=0.25, root=proc.pid) as rss:
            log = proc.communicate()[0]
        if proc.returncode:
            raise RuntimeError(f"jobs/train.py failed at {rows} rows (exit {proc.returncode}):\n{log[-3000:]}")
        rates = [float(m.group(2).replace(",", "")) for m in SAMPLES_LINE.finditer(log)]
        peaks = rss.peaks_mb()
        out["sizes"][rows] = {"samples_per_s": rates[-1] if rates else None, "wall_s": time.perf_counter() - t0,
                              "driver_peak_rss_mb": peaks["root"], "tree_peak_rss_mb": peaks["tree"],
                              "workers_peak_rss_mb": peaks["workers"], "spilled": "Spilled" in log,
                              "cache_lines": [ln for ln in log.splitlines() if " split: " in ln and "[ple-adatt]" in ln]}
    small, large = (out["sizes"][r] for r in (min(datasets), max(datasets)))
    out["ratio_driver_rss_large_vs_small"] = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    out["ratio_tree_rss_large_vs_small"] = large["tree_peak_rss_mb"] / small["tree_peak_rss_mb"]
    return _rounded(out)


def cuda_benchmark(cfg: ExperimentConfig, state, batch_size: int = 8192, steps: int = 30, compile: bool = False) -> dict:
    """GPU throughput of the worker's step: bf16 autocast (train.amp=auto), the train split pinned in
    host memory, the next batch copied on a side stream while the current one trains (prefetch),
    a large batch. Looped and stacked per-task layers. samples/s and peak GPU memory."""
    from ple_adatt.model.layers import set_batched

    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    device = torch.device("cuda")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch_size, "amp": "auto"})})
    data = {k: v.pin_memory() for k, v in load_train_tensors(cfg, state).items()}
    n = len(next(iter(data.values())))
    if n < batch_size:
        raise DataError([f"cuda benchmark: the train split has {n} rows, fewer than batch_size={batch_size}"])
    starts = [i * batch_size for i in range(n // batch_size)]
    copy_stream = torch.cuda.Stream()

    def fetch(i):
        with torch.cuda.stream(copy_stream):
            return {k: v[starts[i % len(starts)]:starts[i % len(starts)] + batch_size].to(device, non_blocking=True)
                    for k, v in data.items()}

    out = {"device": torch.cuda.get_device_name(), "batch_size": batch_size, "amp": "bf16", "compile": compile,
           "steps": steps}
    for mode in ("looped", "batched"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k).to(device)
        set_batched(model, mode == "batched")
        if compile:
            model.compile()
        weighting = build_weighting(cfg).to(device)
        opt = build_optimizer(cfg, list(model.parameters()) + list(weighting.parameters()))
        trainer = Trainer(cfg, model, model, weighting, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
                          device=device)
        torch.cuda.reset_peak_memory_stats()
        nxt = fetch(0)
        for step in range(steps + 5):  # 5 warm-up steps
            if step == 5:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            torch.cuda.current_stream().wait_stream(copy_stream)
            batch, nxt = nxt, fetch(step + 1)
            trainer.step(batch, step)
        torch.cuda.synchronize()
        out[f"{mode}_samples_per_s"] = steps * batch_size / (time.perf_counter() - t0)
        out[f"{mode}_peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        del trainer, model, opt
        torch.cuda.empty_cache()
    out["ratio_batched_vs_looped"] = out["batched_samples_per_s"] / out["looped_samples_per_s"]
    return _rounded(out)


def histogram_auc_error(cfg: ExperimentConfig, state, train_steps: int = 30) -> dict:
    """Histogram (streaming) vs exact sklearn AUC / PR-AUC on the validation split, for every binary
    task, on a briefly trained model's scores and on the oracle's: max |Δ| and the largest bound
    (docs/streaming-metrics.md). ``train_steps`` Trainer steps make the scores trained-ish."""
    from ple_adatt.data.files import parquet_dataset
    from ple_adatt.train.evaluate import predict_batches, validate_streaming
    from ple_adatt.train.metrics import SCORE_BINS, evaluate_predictions, histogram_auc, logit, score_bins

    data = load_train_tensors(cfg, state)
    bs = cfg.train.batch_size
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    weighting = build_weighting(cfg)
    opt = build_optimizer(cfg, list(model.parameters()) + list(weighting.parameters()))
    trainer = Trainer(cfg, model, model, weighting, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    model.train()
    n = len(next(iter(data.values())))
    for step in range(train_steps):
        i = (step * bs) % max(1, n - bs)
        trainer.step({k: v[i:i + bs] for k, v in data.items()}, step)
    spec, tasks = cfg.dataset, cfg.task_names()
    table = parquet_dataset(split_files(spec, "val")).to_table()
    packed = to_tensors(Packer(spec, state, tasks, with_oracles=True)(table))
    rows = len(next(iter(packed.values())))
    batches = [{k: v[i:i + 4096] for k, v in packed.items()} for i in range(0, rows, 4096)]
    preds = predict_batches(model, batches, tasks, torch.device("cpu"), cfg=cfg)
    types = {t: spec.task(t).type for t in tasks}
    exact = evaluate_predictions(types, preds)
    stream = validate_streaming(model, batches, cfg, torch.device("cpu"))
    per_task, bound = {}, 0.0
    for t in (t for t in tasks if types[t] == "binary"):
        m = preds[t]["mask"].astype(bool)
        y = preds[t]["label"][m].astype(np.int64)
        for who, scores in (("model", preds[t]["logits"][m].astype(np.float64)),
                            ("oracle", logit(preds[t]["oracle"][m].astype(np.float64)) if "oracle" in preds[t] else None)):
            if scores is None:
                continue
            idx = score_bins(scores)
            _, _, b_auc, b_ap = histogram_auc(np.bincount(idx[y == 1], minlength=SCORE_BINS),
                                              np.bincount(idx[y == 0], minlength=SCORE_BINS))
            prefix = "" if who == "model" else "oracle_"
            per_task[f"{t}/{who}"] = {k: abs(stream[f"{t}/{prefix}{k}"] - exact[f"{t}/{prefix}{k}"])
                                      for k in ("auc", "pr_auc")}
            per_task[f"{t}/{who}"]["exact_auc"] = exact[f"{t}/{prefix}auc"]
            bound = max(bound, b_auc, b_ap)
    return _rounded({"val_rows": rows, "bins": SCORE_BINS, "train_steps": train_steps, "per_task": per_task,
                     "max_abs_diff_auc": max(v["auc"] for v in per_task.values()),
                     "max_abs_diff_pr_auc": max(v["pr_auc"] for v in per_task.values()),
                     "max_bound": bound})
