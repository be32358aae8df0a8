"""The training loop that runs on every Ray Train worker, top to bottom.

    [1] config + preprocessing state   [2] model, optimizer, schedule (+ resume)
    [3] epochs: shuffled shard -> forward -> masked task losses -> weighting -> backward -> step
    [4] validation on every rank's share, gathered to rank 0 -> metrics -> report + checkpoint
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ple_adatt.adatt import AdaTT, Phase
from ple_adatt.adatt.two_phase import freeze_parameters, prefix_predicate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.model.gates import plot_gate_heatmap
from ple_adatt.data.preprocess import PreprocessState, input_shapes
from ple_adatt.losses.aggregate import aggregate_losses
from ple_adatt.losses.task_losses import TASK_LOSSES
from ple_adatt.losses.weighting import WEIGHTINGS
from ple_adatt.tracking.mlflow_tracking import make_logger
from ple_adatt.train.build import build_model, build_optimizer, build_scheduler, set_schedule_position
from ple_adatt.train.checkpoint import load_state, save_checkpoint
from ple_adatt.train.metrics import evaluate_predictions


class NonFiniteLossError(RuntimeError):
    pass


def task_losses(cfg: ExperimentConfig, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unweighted, masked per-task losses {task: scalar} (fp32)."""
    losses = {}
    for t in cfg.task_names():
        s = cfg.task_settings(t)
        losses[t] = TASK_LOSSES[cfg.task_loss(t)](
            out[t], batch[f"label/{t}"], batch[f"mask/{t}"],
            focal_alpha=s.focal_alpha, focal_gamma=s.focal_gamma, huber_delta=s.huber_delta)
    return losses


def weighted_total(cfg: ExperimentConfig, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Fixed weights applied exactly once (the plain reference loop in the benchmark uses this)."""
    return sum(cfg.task_settings(t).weight * l for t, l in losses.items())


def build_weighting(cfg: ExperimentConfig) -> torch.nn.Module:
    tasks = cfg.task_names()
    return WEIGHTINGS[cfg.loss_weighting.name](tasks, {t: cfg.task_settings(t).weight for t in tasks},
                                               **cfg.weighting_params())


def mean_all_reduce(world: int):
    """Callable averaging a tensor over ranks (None on one process): adaTT/GradNorm/uncertainty sync."""
    if world == 1:
        return None

    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t / world

    return reduce


def autocast_context(cfg: ExperimentConfig, device: torch.device):
    use_bf16 = device.type == "cuda" and cfg.train.amp in ("auto", "bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def predict_batches(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> dict:
    """Run the model over batches; returns {task: {"logits", "label", "mask"[, "oracle"]}} numpy."""
    model.eval()
    acc: dict[str, dict[str, list]] = {t: {} for t in tasks}
    for i, batch in enumerate(batches):
        if not keep(i):
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast_context(cfg, device) if cfg is not None else torch.autocast(device.type, enabled=False):
            out = model(batch)
        for t in tasks:
            parts = {"logits": out[t].float(), "label": batch[f"label/{t}"], "mask": batch[f"mask/{t}"]}
            if f"oracle/{t}" in batch:
                parts["oracle"] = batch[f"oracle/{t}"]
            for k, v in parts.items():
                acc[t].setdefault(k, []).append(v.detach().cpu().numpy())
    return {t: {k: np.concatenate(v) for k, v in d.items()} for t, d in acc.items() if d}


def merge_predictions(parts: list[dict]) -> dict:
    """Concatenate per-rank prediction dicts in rank order (deterministic)."""
    tasks = {t for p in parts for t in p}
    return {t: {k: np.concatenate([p[t][k] for p in parts if t in p]) for k in next(p[t] for p in parts if t in p)}
            for t in tasks}


def validation_loss(cfg: ExperimentConfig, preds: dict) -> dict[str, float]:
    out, total = {}, 0.0
    for t, p in preds.items():
        batch = {f"label/{t}": torch.from_numpy(p["label"]), f"mask/{t}": torch.from_numpy(p["mask"])}
        s = cfg.task_settings(t)
        loss = TASK_LOSSES[cfg.task_loss(t)](torch.from_numpy(p["logits"]), batch[f"label/{t}"], batch[f"mask/{t}"],
                                             focal_alpha=s.focal_alpha, focal_gamma=s.focal_gamma,
                                             huber_delta=s.huber_delta).item()
        out[f"{t}/loss"] = loss
        total += s.weight * loss
    out["loss"] = total
    return out


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


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def build_adatt(cfg: ExperimentConfig):
    if not cfg.adatt.enabled:
        return None
    a, tasks = cfg.adatt, cfg.task_names()
    return AdaTT(tasks, task_groups={t: cfg.dataset.task(t).group for t in tasks},
                 intra_strength=dict(a.intra_strength), inter_strength=a.inter_strength,
                 transfer_lambda=a.transfer_lambda, temperature=a.temperature, ema_decay=a.ema_decay,
                 neg_threshold=a.neg_threshold, max_transfer_ratio=a.max_transfer_ratio,
                 grad_interval=a.grad_interval, prior_blend_start=a.prior_blend_start,
                 prior_blend_end=a.prior_blend_end, warmup_fraction=a.warmup_fraction,
                 freeze_fraction=a.freeze_fraction)


def affinity_target(cfg: ExperimentConfig, model: torch.nn.Module) -> dict:
    """Keyword arguments naming what adaTT differentiates the task losses against (after a forward).

    parameters: every shared-expert parameter (spec §7.1; one backward through all experts per
    task). expert_heads: each shared expert's output head only (GradNorm's "last shared layer").
    representation: the shared experts' output [B, D] (the task side only)."""
    mode = cfg.adatt.affinity_on
    if mode == "representation":
        return {"representation": model.shared_representation()}
    return {"params": model.shared_head_parameters() if mode == "expert_heads" else model.shared_parameters()}


def make_optimizer(cfg: ExperimentConfig, model: torch.nn.Module, extras: list[torch.nn.Module], lr: float,
                   total_steps: int):
    """AdamW over trainable model params (per-expert lr/wd groups for ple_hetero) + extras without
    weight decay (uncertainty log-variances, adaTT's W), and its warmup/cosine schedule."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if hasattr(model, "shared") and (cfg.model.experts.lr or cfg.model.experts.weight_decay):
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in model.shared.param_groups(
            cfg.model.experts.lr, cfg.model.experts.weight_decay, lr, cfg.train.weight_decay)]
        in_shared = {id(p) for p in model.shared.parameters()}
        groups.append({"params": [p for p in trainable if id(p) not in in_shared]})
    else:
        groups = [{"params": trainable}]
    groups.append({"params": [p for m in extras for p in m.parameters()], "weight_decay": 0.0})
    optimizer = build_optimizer(cfg, [g for g in groups if g["params"]], lr)
    return optimizer, build_scheduler(cfg, optimizer, total_steps)


def enter_phase2(cfg: ExperimentConfig, raw_model, adatt) -> list[str]:
    """Freeze shared experts + CGC gate, switch adaTT off (spec §8.1). Returns frozen names."""
    frozen = freeze_parameters(raw_model.named_parameters(), prefix_predicate(raw_model.phase2_frozen_prefixes()))
    if adatt is not None:
        adatt.disable()
    return frozen


def log_gate_diagnostics(raw_model, metrics: dict, logger, last_epoch: bool, rank: int) -> None:
    """Per-task gate entropy ratios and weights as metrics; a tasks x experts heatmap at the end."""
    if rank != 0 or not hasattr(raw_model, "gate_diagnostics"):
        return
    diag = raw_model.gate_diagnostics()
    for gate, w in diag["weights"].items():
        labels = diag["labels"][gate]
        for i, t in enumerate(diag["tasks"]):
            for j, e in enumerate(labels):
                metrics[f"gate/{gate}/{t}/{e}"] = float(w[i, j])
    for gate, ratios in diag["entropy"].items():
        for i, t in enumerate(diag["tasks"]):
            metrics[f"gate/{gate}/{t}/entropy_ratio"] = float(ratios[i])
    if last_epoch and diag["weights"]:
        with tempfile.TemporaryDirectory() as d:
            for gate, w in diag["weights"].items():
                path = plot_gate_heatmap(w, diag["tasks"], diag["labels"][gate], Path(d) / f"gate_{gate}.png",
                                         title=f"CGC gate weights ({gate})")
                logger.log_artifact(path, "diagnostics")


def log_adatt_diagnostics(adatt, epoch: int, metrics: dict, logger, rank: int) -> None:
    if adatt is None or rank != 0:
        return
    metrics["adatt/phase"] = int(adatt.phase)
    metrics["adatt/blend_ratio"] = float(adatt.blend_ratio)
    neg = adatt.negative_transfer()
    metrics["adatt/negative_pairs"] = len(neg)
    with tempfile.TemporaryDirectory() as d:
        for path in adatt.save_heatmaps(d, epoch):
            logger.log_artifact(path, "diagnostics/adatt")
        snap = Path(d) / f"adatt_e{epoch:03d}.json"
        snap.write_text(json.dumps({"tasks": adatt.task_names, "affinity": adatt.affinity.tolist(),
                                    "transfer_weights": adatt.transfer_weights()[0].tolist(),
                                    "negative_pairs": [list(p) for p in neg], "phase": adatt.phase.name}))
        logger.log_artifact(snap, "diagnostics/adatt")
        final = Path(d) / "affinity_final.json"  # overwritten each epoch: the last one is the final epoch's
        final.write_text(json.dumps({"tasks": adatt.task_names, "matrix": adatt.affinity.tolist(), "epoch": epoch}))
        logger.log_artifact(final, "adatt")


def train_loop_per_worker(config: dict) -> None:
    # [1] config and preprocessing state (re-validated: the worker trusts nothing it is handed)
    cfg = ExperimentConfig.model_validate(config["experiment"])
    state = PreprocessState.from_dict(config["preprocess"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    logger = make_logger(config.get("tracking_uri"), config.get("mlflow_run_id"), rank)
    tasks, t_cfg = cfg.task_names(), cfg.train
    task_types = {t: cfg.dataset.task(t).type for t in tasks}
    phase1_epochs, total_epochs = t_cfg.epochs, cfg.total_epochs()

    # [2] model, loss weighting, adaTT, optimizer, schedule; resume from the latest checkpoint
    torch.manual_seed(t_cfg.seed)
    raw_model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    extras = [m for m in (weighting, adatt) if m is not None]
    reduce_mean = mean_all_reduce(world)
    steps_per_epoch = max(1, math.ceil(config["train_rows"] // world / t_cfg.batch_size))
    phase = 1
    optimizer, scheduler = make_optimizer(cfg, raw_model, extras, t_cfg.lr, steps_per_epoch * phase1_epochs)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            saved = load_state(d)
        raw_model.load_state_dict(saved["model"])
        weighting.load_state_dict(saved["extra"]["weighting"])
        if adatt is not None:
            adatt.load_state_dict(saved["extra"]["adatt"])
        if saved["extra"].get("phase", 1) == 2:  # rebuild the phase-2 optimizer before loading its state
            phase = 2
            enter_phase2(cfg, raw_model, adatt)
            optimizer, scheduler = make_optimizer(cfg, raw_model, [weighting], cfg.two_phase.phase2_lr or t_cfg.lr,
                                                  steps_per_epoch * cfg.two_phase.phase2_epochs)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, history = saved["epoch"] + 1, saved["history"]
        saved_world = saved["extra"].get("world_size", world)
        if saved_world != world:  # elastic restart / relaunch at another scale: steps per epoch changed
            set_schedule_position(scheduler, (start_epoch - (phase1_epochs if phase == 2 else 0)) * steps_per_epoch)
        if rank == 0:
            print(f"[ple-adatt] resumed from checkpoint after epoch {saved['epoch']} (phase {phase}) on "
                  f"{world} worker(s); the checkpoint was written by {saved_world}", flush=True)
    model = ray.train.torch.prepare_model(raw_model)

    train_shard = ray.train.get_dataset_shard("train")
    val_iter = ray.train.get_dataset_shard("val")
    bad_in_row, skipped_total = 0, 0
    global_step = start_epoch * steps_per_epoch

    if start_epoch >= total_epochs:  # relaunch of a finished run: report the final metrics again
        ray.train.report(history[-1] if history else {"epoch": total_epochs - 1})
        return

    # [3] epochs
    run_start = time.perf_counter()
    for epoch in range(start_epoch, total_epochs):
        _maybe_inject_failure(cfg, epoch, rank)
        if epoch >= phase1_epochs and phase == 1:  # two-phase training: switch once, fresh optimizer
            phase = 2
            frozen = enter_phase2(cfg, raw_model, adatt)
            model = ray.train.torch.prepare_model(raw_model)  # DDP must forget the frozen parameters
            optimizer, scheduler = make_optimizer(cfg, raw_model, [weighting], cfg.two_phase.phase2_lr or t_cfg.lr,
                                                  steps_per_epoch * cfg.two_phase.phase2_epochs)
            if rank == 0:
                print(f"[ple-adatt] phase 2: froze {len(frozen)} shared tensors, adaTT off", flush=True)
        if adatt is not None and phase == 1:
            if adatt.on_epoch_start(epoch, phase1_epochs) is Phase.FROZEN and hasattr(raw_model, "shared"):
                raw_model.shared.freeze_gate()  # CGC and adaTT freeze together (spec §7.7)
        torch.manual_seed(t_cfg.seed + 1000 * (epoch + 1) + rank)  # dropout RNG: a function of epoch only
        model.train()
        t0, n_rows, n_batches = time.perf_counter(), 0, 0
        loss_sums = {t: 0.0 for t in tasks}
        term_sums: dict[str, float] = {}
        batches = train_shard.iter_torch_batches(
            batch_size=t_cfg.batch_size, prefetch_batches=2, drop_last=False,
            local_shuffle_buffer_size=t_cfg.shuffle_buffer or None,
            local_shuffle_seed=(t_cfg.seed * 7919 + epoch) if t_cfg.shuffle_buffer else None)
        for batch in batches:
            with autocast_context(cfg, device):
                out = model(batch)
            losses = task_losses(cfg, out, batch)
            present = {t: bool(batch[f"mask/{t}"].any()) for t in tasks}
            if cfg.loss_weighting.name == "gradnorm":  # updates its task weights before the backward pass
                weighting.gradnorm_step(losses, raw_model.shared_parameters(), present, reduce_mean)
            weighted, extra = weighting(losses, present)
            transfer = None
            if adatt is not None and phase == 1:
                adatt.maybe_update_affinity(
                    global_step, weighted, counts={t: batch[f"mask/{t}"].sum() for t in weighted},
                    all_reduce_mean=reduce_mean, **affinity_target(cfg, raw_model))
                transfer = lambda w: adatt.transfer_losses(w, present)  # noqa: E731
            total, terms = aggregate_losses(weighted, extra, transfer=transfer, **raw_model.aux_losses())
            # A task with no label on this rank drops out of `weighted`; keep its tower in the graph
            # (zero gradient) so DDP's reducer sees every parameter on every rank.
            total = total + sum((0.0 * l for t, l in losses.items() if not present[t]), total.new_zeros(()))
            finite = torch.isfinite(total.detach()).float()
            if world > 1:  # every rank must agree to skip, or DDP's all-reduce would hang
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            global_step += 1
            if finite.item() < 1:
                bad_in_row, skipped_total = bad_in_row + 1, skipped_total + 1
                optimizer.zero_grad(set_to_none=True)
                if bad_in_row >= t_cfg.max_nonfinite_in_row:
                    raise NonFiniteLossError(
                        f"{bad_in_row} consecutive batches had a non-finite loss (epoch {epoch}); aborting. "
                        f"Lower train.lr, check inputs for extreme values, or raise train.max_nonfinite_in_row.")
                continue
            bad_in_row = 0
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            weighting.sync_gradients(reduce_mean)
            if adatt is not None:
                adatt.sync_gradients(reduce_mean)
            if t_cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t_cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            n_rows += len(batch[f"mask/{tasks[0]}"])
            n_batches += 1
            for t, l in losses.items():
                loss_sums[t] += l.item()
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v)
        train_time = time.perf_counter() - t0

        # [4] validation: rank r scores batches i with i % world == r; predictions gathered on rank 0
        # The unwrapped module: DDP's forward broadcasts buffers (a collective), and ranks score
        # different numbers of validation batches.
        preds = predict_batches(raw_model, val_iter.iter_torch_batches(batch_size=4096, prefetch_batches=2),
                                tasks, device, keep=lambda i: i % world == rank, cfg=cfg)
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(preds, gathered, dst=0)
            preds = merge_predictions(gathered) if rank == 0 else {}
        sums = _all_reduce_sum([n_rows, n_batches, skipped_total] + [loss_sums[t] for t in tasks], world)
        g_rows, g_batches, g_skipped = sums[0], max(1.0, sums[1]), sums[2]
        metrics = {"epoch": epoch, "phase": phase, "world_size": world,
                   "train/samples_per_s": g_rows / max(train_time, 1e-9),
                   "train/skipped_nonfinite_batches": g_skipped,
                   "train/loss": sum(cfg.task_settings(t).weight * s for t, s in zip(tasks, sums[3:])) / g_batches,
                   "lr": scheduler.get_last_lr()[0]}
        for t, s in zip(tasks, sums[3:]):
            metrics[f"train/{t}/loss"] = s / g_batches
        metrics.update({f"loss_terms/{k}": v / max(1, n_batches) for k, v in term_sums.items()})  # this rank's
        if "adatt/transfer_entropy" in term_sums:
            metrics["adatt/transfer_entropy"] = term_sums["adatt/transfer_entropy"] / max(1, n_batches)
        weighting.on_epoch_end({t: metrics[f"train/{t}/loss"] for t in tasks})  # identical on every rank
        metrics.update({f"weight/{t}": w for t, w in weighting.weights().items()})
        if rank == 0:
            metrics.update({f"val/{k}": v for k, v in validation_loss(cfg, preds).items()})
            metrics.update({f"val/{k}": v for k, v in evaluate_predictions(task_types, preds).items()})
            elapsed = time.perf_counter() - run_start
            eta = elapsed / (epoch - start_epoch + 1) * (total_epochs - epoch - 1)
            summary = " ".join(f"{k.split('/', 2)[-1]}={metrics[k]:.4f}" for k in sorted(metrics)
                               if k.startswith("val/avg/") and k.endswith(("/auc", "/accuracy", "/rmse")))
            print(f"[ple-adatt] epoch {epoch + 1}/{total_epochs} | {metrics['train/samples_per_s']:,.0f} samples/s | "
                  f"train loss {metrics['train/loss']:.4f} | val loss {metrics['val/loss']:.4f} {summary} | "
                  f"eta {_fmt_eta(eta)}", flush=True)
        log_gate_diagnostics(raw_model, metrics, logger, epoch == total_epochs - 1, rank)
        log_adatt_diagnostics(adatt, epoch, metrics, logger, rank)
        history.append(metrics)
        logger.log_metrics(metrics, step=epoch)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                extra_state = {"weighting": weighting.state_dict(), "phase": phase, "world_size": world,
                               "adatt": adatt.state_dict() if adatt is not None else None}
                save_checkpoint(tmp, model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                                epoch=epoch, history=history, cfg=cfg, preprocess=state, extra=extra_state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")
