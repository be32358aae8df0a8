"""A 2-process torch.distributed (gloo) harness of the real per-worker training, no Ray.

``run_ranks(overrides, dataset)`` builds the model, weighting, adaTT and optimizer from
configs/smoke/tiny.yaml plus ``overrides`` exactly as the Ray worker does (train/build.py), wraps
the model in torch DDP on gloo through the trainable-set mechanism (train/trainable.py), and runs
``begin_epoch`` + ``Trainer.step`` (train/step.py) + the weighting's epoch hook over every epoch of
both training phases on tiny in-memory batches: each step's global batch is split in contiguous
halves, one per rank. It
returns, per rank and per epoch, the training phase, adaTT's phase, the frozen set and a flat copy
of every parameter and buffer (model, weighting, adaTT), so a test can check that all phases run
and that the ranks stay in sync (``in_sync``). About a second per config; parametrisable by
overrides, for a coverage matrix (issue 14).

``spawn(fn, world, *args)`` is the fork + gloo launcher underneath, for other 2-process tests.
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs/smoke/tiny.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, out, fn, args):
    import faulthandler

    faulthandler.dump_traceback_later(80, exit=True)  # a stuck child prints its stacks and exits
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # DDP and its reducer are freed inside fn, before the process group is destroyed.
        torch.save(fn(rank, world, *args), f"{out}.{rank}")
        gc.collect()
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = 120.0) -> list:
    """Run ``fn(rank, world, *args)`` in ``world`` forked processes joined in a gloo group; returns
    each rank's return value (torch.save-able). A child's exception is re-raised here."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        # fork: children inherit the imported torch and the parent's tensors (spawn re-imports, ~5 s each).
        ctx = torch.multiprocessing.start_processes(_entry, args=(world, free_port(), out, fn, args),
                                                    nprocs=world, join=False, start_method="fork")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                raise TimeoutError(f"gloo workers did not finish within {timeout:.0f} s")
        return [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]


def load_setup(dataset: Path | str, overrides: list[str], rows: int):
    """(cfg, preprocess state, the first ``rows`` training rows as packed tensors)."""
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.preprocess import fit_preprocessing
    from ple_adatt.launch.benchmark import load_train_tensors

    cfg = load_config(TINY_CONFIG, [f"dataset={dataset}", *overrides])
    state = fit_preprocessing(cfg.dataset)
    data = {k: v[:rows] for k, v in load_train_tensors(cfg, state).items()}
    return cfg, state, data


def _snapshot(trainer) -> torch.Tensor:
    tensors = [*trainer.raw_model.state_dict().values(), *trainer.weighting.state_dict().values()]
    if trainer.adatt is not None:
        tensors += list(trainer.adatt.state_dict().values())
    return torch.cat([t.detach().double().reshape(-1) for t in tensors])


def train_rank(rank: int, world: int, cfg, state, data: dict, batch_per_rank: int, steps_per_epoch: int,
               checkpoints: str | None = None, stop_after: int | None = None, resume: str | None = None) -> dict:
    """The worker loop's training part on one rank (train/loop.py without Ray Data, validation,
    reporting). Returns {"phase", "adatt_phase", "frozen", "state"} lists, one entry per epoch run.

    checkpoints: a folder where rank 0 writes the worker's real checkpoint (train/checkpoint.py)
    after every epoch (``epoch_0003``...); stop_after: end the run after that epoch's checkpoint
    (a kill); resume: a checkpoint folder to restart from, through the worker's own
    ``restore_checkpoint`` and epoch-start transition."""
    from torch.nn.parallel import DistributedDataParallel

    from ple_adatt.data.preprocess import input_shapes
    from ple_adatt.train.build import build_adatt, build_model, build_weighting
    from ple_adatt.train.step import Trainer
    from ple_adatt.train.trainable import TrainableSet, begin_epoch, phase_optimizer

    torch.manual_seed(cfg.train.seed)
    raw = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    optimizer, scheduler = phase_optimizer(cfg, raw, weighting, adatt, 1, steps_per_epoch)
    trainer = Trainer(cfg, raw, raw, weighting, adatt, optimizer, scheduler, world=world)
    trainable = TrainableSet(raw, DistributedDataParallel if world > 1 else (lambda m: m))
    n = len(next(iter(data.values())))
    global_batch = batch_per_rank * world
    out = {"phase": [], "adatt_phase": [], "frozen": [], "state": [], "skipped": 0}
    phase, step, start, history = 1, 0, 0, []
    if resume is not None:
        from ple_adatt.train.checkpoint import load_state
        from ple_adatt.train.loop import restore_checkpoint

        phase, start, history = restore_checkpoint(trainer, load_state(resume), steps_per_epoch)
        step = start * steps_per_epoch
    for epoch in range(start, cfg.total_epochs()):
        phase, _ = begin_epoch(trainer, trainable, epoch, phase, steps_per_epoch)
        torch.manual_seed(cfg.train.seed + 1000 * (epoch + 1) + rank)  # as the worker: dropout per epoch
        trainer.model.train()
        sums = torch.zeros(len(cfg.task_names()) + 1, dtype=torch.float64)  # per-task loss sums, batches
        for _ in range(steps_per_epoch):
            start = (step * global_batch) % max(1, n - global_batch + 1)
            rows = slice(start + rank * batch_per_rank, start + (rank + 1) * batch_per_rank)
            result = trainer.step({k: v[rows] for k, v in data.items()}, step)
            step += 1
            out["skipped"] += not result.finite
            if result.finite:
                sums += torch.tensor([*(float(result.losses[t]) for t in cfg.task_names()), 1.0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        # As the worker: epoch means over all ranks' batches feed the weighting's epoch hook (DWA).
        weighting.on_epoch_end({t: float(v) / max(1.0, float(sums[-1])) for t, v in zip(cfg.task_names(), sums)})
        out["phase"].append(phase)
        out["adatt_phase"].append(adatt.phase.name if adatt is not None else None)
        out["frozen"].append(sorted(trainable.frozen))
        out["state"].append(_snapshot(trainer))
        if checkpoints is not None:
            _save(rank, world, trainer, cfg, state, phase, epoch, history, checkpoints)
        if epoch == stop_after:
            break
    del trainer, trainable  # the DDP wrapper goes before the process group
    return out


def _save(rank, world, trainer, cfg, state, phase, epoch, history, folder) -> None:
    """Rank 0 writes the checkpoint the Ray worker would (same contents); every rank waits for it."""
    from ple_adatt.train.checkpoint import save_checkpoint

    history.append({"epoch": epoch, "phase": phase})
    if rank == 0:
        extra = {"weighting": trainer.weighting.state_dict(), "phase": phase,
                 "adatt": trainer.adatt.state_dict() if trainer.adatt is not None else None}
        save_checkpoint(Path(folder) / f"epoch_{epoch:04d}", model=trainer.raw_model, optimizer=trainer.optimizer,
                        scheduler=trainer.scheduler, scaler=None, epoch=epoch, history=history, cfg=cfg,
                        preprocess=state, extra=extra)
    if world > 1:
        dist.barrier()


def in_sync(ranks: list[dict]) -> list[bool]:
    """Per epoch: every rank's snapshot equals rank 0's exactly (NaN buffers, e.g. DWA's, compare equal)."""
    return [all(torch.equal(torch.nan_to_num(s[e], nan=-7.0), torch.nan_to_num(ranks[0]["state"][e], nan=-7.0))
                for s in (r["state"] for r in ranks)) for e in range(len(ranks[0]["state"]))]


def run_ranks(overrides: list[str], dataset: Path | str, world: int = 2, batch_per_rank: int = 16,
              steps_per_epoch: int = 2, timeout: float = 120.0, checkpoints: str | None = None,
              stop_after: int | None = None, resume: str | None = None) -> list[dict]:
    """Train configs/smoke/tiny.yaml + ``overrides`` on ``world`` gloo ranks; see the module docstring
    and ``train_rank`` for the checkpoint / kill / resume arguments."""
    rows = batch_per_rank * world * steps_per_epoch * 2
    cfg, state, data = load_setup(dataset, overrides, rows)
    return spawn(train_rank, world, cfg, state, data, batch_per_rank, steps_per_epoch, checkpoints, stop_after,
                 resume, timeout=timeout)
