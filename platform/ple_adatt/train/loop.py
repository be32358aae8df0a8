"""The training loop that runs on every Ray Train worker, top to bottom.

    [1] config + preprocessing state   [2] model, optimizer, schedule (+ resume: restore_checkpoint)
    [3] epochs: training phase and trainable set (train/trainable.py) -> shuffled shard -> one step
        per batch (train/step.py)
    [4] validation on every rank's share, merged by one all-reduce -> metrics -> report + checkpoint
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.preprocess import PreprocessState, input_shapes
from ple_adatt.tracking.mlflow_tracking import make_logger
from ple_adatt.train.build import build_adatt, build_model, build_weighting, set_schedule_position
from ple_adatt.train.checkpoint import load_model_weights, load_state, save_checkpoint
from ple_adatt.train.diagnostics import (log_adatt_diagnostics, log_diagnostics_table, log_gate_diagnostics,
                                         log_sae_dictionary)
from ple_adatt.train.evaluate import validate_streaming
from ple_adatt.train.monitor import collapse_flags, collapsed_tasks, shared_decision, should_stop
from ple_adatt.train.reporting import EpochProgress, fmt_duration, for_mlflow, for_report, quiet_logs, say
from ple_adatt.train.step import NonFiniteLossError, Trainer
from ple_adatt.train.trainable import TrainableSet, begin_epoch, phase_optimizer


def steps_per_epoch(train_rows: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch on each rank: sizes the schedule and numbers the global step.
    A function of the CURRENT world size (the one place to change for elastic resizing)."""
    return max(1, math.ceil(train_rows // world / batch_size))


def restore_checkpoint(trainer: Trainer, saved: dict, steps: int) -> tuple[int, int, list]:
    """Load a checkpoint into ``trainer`` (built for phase 1); returns (training phase, first epoch
    to run, history). In phase 2 the phase-2 optimizer is rebuilt (train/trainable.phase_optimizer)
    before its saved state is loaded; the trainable set is re-applied by the epoch loop from the
    same checkpointed state (training phase, adaTT phase), so it is exactly the saved run's."""
    load_model_weights(trainer.raw_model, saved["model"], "being resumed")
    trainer.weighting.load_state_dict(saved["extra"]["weighting"])
    if trainer.adatt is not None:
        trainer.adatt.load_state_dict(saved["extra"]["adatt"])
    phase = saved["extra"].get("phase", 1)
    if phase == 2:
        if trainer.adatt is not None:
            trainer.adatt.disable()
        trainer.optimizer, trainer.scheduler = phase_optimizer(trainer.cfg, trainer.raw_model, trainer.weighting,
                                                               trainer.adatt, 2, steps)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    start_epoch = saved["epoch"] + 1
    if saved["extra"].get("world_size", trainer.world) != trainer.world:
        # Elastic restart or a relaunch at another scale: steps per epoch changed with the world size.
        done = start_epoch - (trainer.cfg.train.epochs if phase == 2 else 0)  # epochs of this phase
        set_schedule_position(trainer.scheduler, done * steps)
    return phase, start_epoch, saved["history"]


def _maybe_inject_failure(cfg: ExperimentConfig, epoch: int, rank: int) -> None:
    fi = cfg.train.fault_injection
    if fi is None or epoch not in fi.epochs or fi.rank != rank:
        return
    marker = Path(f"{fi.marker}.e{epoch}")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"failed rank {rank} at epoch {epoch}\n")
    raise RuntimeError(f"injected failure (train.fault_injection) on rank {rank} at epoch {epoch}")


def _all_reduce_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _stops_early(cfg: ExperimentConfig, history: list[dict]) -> bool:
    es = cfg.train.early_stopping
    return es is not None and should_stop(history, cfg.train.checkpoint_metric, cfg.train.checkpoint_mode,
                                          es.patience, es.min_delta)


def train_loop_per_worker(config: dict) -> None:
    # [1] config and preprocessing state (re-validated: the worker trusts nothing it is handed)
    quiet_logs()
    cfg = ExperimentConfig.model_validate(config["experiment"])
    state = PreprocessState.from_dict(config["preprocess"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    logger = make_logger(config.get("tracking_uri"), config.get("mlflow_run_id"), rank)
    tasks, t_cfg = cfg.task_names(), cfg.train
    task_types = {t: cfg.dataset.task(t).type for t in tasks}
    total_epochs = cfg.total_epochs()

    # [2] model, loss weighting, adaTT, optimizer, schedule; resume from the latest checkpoint
    torch.manual_seed(t_cfg.seed)
    raw_model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)
    if t_cfg.compile:  # in place: state_dict keys (checkpoints) stay those of the plain module
        raw_model.compile()
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    steps = steps_per_epoch(config["train_rows"], world, t_cfg.batch_size)
    phase = 1
    optimizer, scheduler = phase_optimizer(cfg, raw_model, weighting, adatt, 1, steps)
    trainer = Trainer(cfg, raw_model, raw_model, weighting, adatt, optimizer, scheduler, world=world, device=device)
    trainable = TrainableSet(raw_model, ray.train.torch.prepare_model)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            saved = load_state(d)
        phase, start_epoch, history = restore_checkpoint(trainer, saved, steps)
        if rank == 0:
            say(f"[ple-adatt] resumed from checkpoint after epoch {saved['epoch']} (phase {phase}) on {world} "
                f"worker(s); the checkpoint was written by {saved['extra'].get('world_size', world)}")

    train_shard = ray.train.get_dataset_shard("train")
    val_iter = ray.train.get_dataset_shard("val")
    bad_in_row, skipped_total = 0, 0
    global_step = start_epoch * steps

    if start_epoch >= total_epochs or _stops_early(cfg, history):  # relaunch of a finished run: report again
        ray.train.report(for_report(history[-1]) if history else {"epoch": total_epochs - 1})
        return

    # [3] epochs
    run_start = time.perf_counter()
    for epoch in range(start_epoch, total_epochs):
        _maybe_inject_failure(cfg, epoch, rank)
        phase, changed = begin_epoch(trainer, trainable, epoch, phase, steps)  # same on every rank
        if changed and rank == 0 and trainable.frozen:
            say(f"[ple-adatt] epoch {epoch + 1}: {len(trainable.frozen)} parameter tensors frozen (phase {phase}"
                f"{', adaTT ' + adatt.phase.name.lower() if adatt is not None else ''})")
        torch.manual_seed(t_cfg.seed + 1000 * (epoch + 1) + rank)  # dropout RNG: a function of epoch only
        trainer.model.train()
        t0, n_rows, n_batches = time.perf_counter(), 0, 0
        loss_sums = {t: 0.0 for t in tasks}
        term_sums: dict[str, float] = {}
        progress = EpochProgress(epoch, total_epochs, config["train_rows"] // world, world) if rank == 0 else None
        batches = train_shard.iter_torch_batches(
            batch_size=t_cfg.batch_size, prefetch_batches=2, drop_last=False,
            local_shuffle_buffer_size=t_cfg.shuffle_buffer or None,
            local_shuffle_seed=(t_cfg.seed * 7919 + epoch) if t_cfg.shuffle_buffer else None)
        for batch in batches:
            out = trainer.step(batch, global_step)
            global_step += 1
            if not out.finite:
                bad_in_row, skipped_total = bad_in_row + 1, skipped_total + 1
                if bad_in_row >= t_cfg.max_nonfinite_in_row:
                    raise NonFiniteLossError(
                        f"{bad_in_row} consecutive batches had a non-finite loss (epoch {epoch}); aborting. "
                        f"Lower train.lr, check inputs for extreme values, or raise train.max_nonfinite_in_row.")
                continue
            bad_in_row = 0
            n_rows += len(batch[f"mask/{tasks[0]}"])
            n_batches += 1
            for t, l in out.losses.items():
                loss_sums[t] += l.item()
            for k, v in out.terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v)
            if progress is not None:
                progress.update(n_rows)
        train_time = time.perf_counter() - t0

        # [4] validation: rank r scores batches i with i % world == r; sufficient statistics and score
        # histograms merged by one all-reduce (memory bounded whatever the split's size)
        val = validate_streaming(raw_model, val_iter.iter_torch_batches(batch_size=4096, prefetch_batches=2),
                                 cfg, device, rank, world, targets=state.targets)
        sums = _all_reduce_sum([n_rows, n_batches, skipped_total] + [loss_sums[t] for t in tasks], world)
        g_rows, g_batches, g_skipped = sums[0], max(1.0, sums[1]), sums[2]
        metrics = {"epoch": epoch, "phase": phase, "world_size": world, "train/samples_per_s": g_rows / max(train_time, 1e-9),
                   "train/skipped_nonfinite_batches": g_skipped,
                   "train/loss": sum(cfg.task_settings(t).weight * s for t, s in zip(tasks, sums[3:])) / g_batches,
                   "lr": trainer.scheduler.get_last_lr()[0]}
        for t, s in zip(tasks, sums[3:]):
            metrics[f"train/{t}/loss"] = s / g_batches
        metrics.update({f"loss_terms/{k}": v / max(1, n_batches) for k, v in term_sums.items()})  # this rank's
        if "adatt/transfer_entropy" in term_sums:
            metrics["adatt/transfer_entropy"] = term_sums["adatt/transfer_entropy"] / max(1, n_batches)
        weighting.on_epoch_end({t: metrics[f"train/{t}/loss"] for t in tasks})  # identical on every rank
        metrics.update({f"weight/{t}": w for t, w in weighting.weights().items()})
        if rank == 0:
            # loss and spreads in the units the model trains in; metrics in the label's original units
            metrics.update({f"val/{k}": v for k, v in val.items()})
            metrics.update(collapse_flags(task_types, metrics))
            collapsed = collapsed_tasks(task_types, metrics)
            elapsed = time.perf_counter() - run_start
            eta = elapsed / (epoch - start_epoch + 1) * (total_epochs - epoch - 1)
            summary = " ".join(f"{k.split('/', 2)[-1]}={metrics[k]:.4f}" for k in sorted(metrics)
                               if k.startswith("val/avg/") and k.endswith(("/auc", "/accuracy", "/rmse")))
            say(f"[ple-adatt] epoch {epoch + 1}/{total_epochs} | {metrics['train/samples_per_s']:,.0f} samples/s | "
                f"train loss {metrics['train/loss']:.4f} | val loss {metrics['val/loss']:.4f} {summary} | "
                f"eta {fmt_duration(eta)}")
            if collapsed:
                say("[ple-adatt]   COLLAPSED (validation predictions carry no signal): "
                    + "; ".join(f"{t} ({why})" for t, why in collapsed.items()) + " - see docs/rare-tasks.md")
        log_gate_diagnostics(raw_model, metrics, logger, epoch == total_epochs - 1, rank)
        log_sae_dictionary(raw_model, logger, epoch == total_epochs - 1, rank)
        log_adatt_diagnostics(adatt, epoch, metrics, logger, rank)
        history.append(metrics)
        # rank 0 holds the validation metrics; every rank follows its decision (same epoch everywhere)
        stop = shared_decision(rank == 0 and _stops_early(cfg, history), world) and epoch < total_epochs - 1
        if stop:
            metrics["early_stopped"] = 1.0
            if rank == 0:
                es = t_cfg.early_stopping
                say(f"[ple-adatt] early stopping after epoch {epoch + 1}: {t_cfg.checkpoint_metric} did not improve "
                    f"by more than {es.min_delta:g} in {es.patience} epoch(s)")
        logger.log_epoch(for_mlflow(metrics), step=epoch, tags={"ple_adatt.phase": str(phase)})  # one call
        log_diagnostics_table(history, logger, rank)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                extra_state = {"weighting": weighting.state_dict(), "phase": phase, "world_size": world,
                               "adatt": adatt.state_dict() if adatt is not None else None}
                save_checkpoint(tmp, model=raw_model, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                                scaler=None, epoch=epoch, history=history, cfg=cfg, preprocess=state, extra=extra_state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(for_report(metrics), checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")
        if stop:
            break
