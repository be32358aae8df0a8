"""One training step, the task losses and the validation loss: the only copy, used by the Ray
worker loop (train/loop.py), the benchmark's plain loop (launch/benchmark.py), the 2-process
gloo harness (tests/ddp_harness.py) and unit tests.

One step, on every rank in the same order (spec §6, §7; docs/model-task-side.md):
    forward -> masked task losses -> weighting.before_backward (GradNorm moves λ) -> weighting
    -> adaTT measurement + transfer (when active) -> regularisers -> all-ranks finite check
    -> backward -> weighting/adaTT gradient sync -> clip -> optimizer and schedule step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ple_adatt.adatt import AdaTT, Phase
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.losses.aggregate import aggregate_losses
from ple_adatt.losses.task_losses import TASK_LOSSES
from ple_adatt.model.sidecars import sidecars_of


class NonFiniteLossError(RuntimeError):
    pass


def task_losses(cfg: ExperimentConfig, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unweighted, masked per-task losses {task: scalar} (fp32)."""
    losses = {}
    for t in cfg.task_names():
        s = cfg.task_settings(t)
        losses[t] = TASK_LOSSES[cfg.task_loss(t)](
            out[t], batch[f"label/{t}"], batch[f"mask/{t}"],
            focal_alpha=s.focal_alpha, focal_gamma=s.focal_gamma, huber_delta=s.huber_delta,
            pos_weight=s.pos_weight)
    return losses


def validation_loss(cfg: ExperimentConfig, preds: dict) -> dict[str, float]:
    """{task/loss, loss (fixed-weighted sum)} over gathered predictions (train/evaluate.py's format)."""
    out, total = {}, 0.0
    for t, p in preds.items():
        batch = {f"label/{t}": torch.from_numpy(p["label"]), f"mask/{t}": torch.from_numpy(p["mask"])}
        s = cfg.task_settings(t)
        loss = TASK_LOSSES[cfg.task_loss(t)](torch.from_numpy(p["logits"]), batch[f"label/{t}"], batch[f"mask/{t}"],
                                             focal_alpha=s.focal_alpha, focal_gamma=s.focal_gamma,
                                             huber_delta=s.huber_delta, pos_weight=s.pos_weight).item()
        out[f"{t}/loss"] = loss
        total += s.weight * loss
    out["loss"] = total
    return out


def sidecar_losses(cfg: ExperimentConfig, raw_model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict:
    """aggregate_losses keyword arguments of the model's sidecars after a forward: ``evidential``
    (model.evidential.loss_weight x Σ_t evidential loss of t) and ``sae_weight``; {} without sidecars."""
    side = sidecars_of(raw_model)
    if side is None:
        return {}
    e, out = cfg.model.evidential, {"sae_weight": cfg.model.sae.loss_weight}
    if side.last:
        per_task = side.evidential_loss(batch, epoch, kl_weight=e.kl_weight, anneal_epochs=e.anneal_epochs,
                                        nig_reg=e.nig_reg)
        out["evidential"] = e.loss_weight * sum(per_task.values())
    return out


def mean_all_reduce(world: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
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


def affinity_target(cfg: ExperimentConfig, model: torch.nn.Module) -> dict:
    """Keyword arguments naming what adaTT differentiates the task losses against (after a forward).

    parameters: every shared-expert parameter (spec §7.1; one backward through all experts per
    task). expert_heads: each shared expert's output head only (GradNorm's "last shared layer").
    representation: the shared experts' output [B, D] (the task side only)."""
    mode = cfg.adatt.affinity_on
    if mode == "representation":
        return {"representation": model.shared_representation()}
    return {"params": model.shared_head_parameters() if mode == "expert_heads" else model.shared_parameters()}


@dataclass
class StepOutput:
    """losses: unweighted per-task losses (detached); terms: aggregate_losses' log (detached);
    finite: False when any rank's total was non-finite and every rank skipped the update."""
    losses: dict[str, torch.Tensor]
    terms: dict[str, torch.Tensor]
    finite: bool


@dataclass
class Trainer:
    """Everything one step touches. ``model`` is what the forward runs through (``raw_model`` or
    its DDP wrapper); the loop swaps ``model`` / ``optimizer`` / ``scheduler`` when the trainable
    set or the training phase changes (train/trainable.py). Side computations (GradNorm, adaTT)
    always differentiate the unwrapped ``raw_model`` so DDP's reducer is not triggered."""
    cfg: ExperimentConfig
    raw_model: nn.Module
    model: nn.Module
    weighting: nn.Module
    adatt: AdaTT | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0  # set by train/trainable.begin_epoch; anneals the evidential KL term

    def __post_init__(self) -> None:
        self.reduce_mean = mean_all_reduce(self.world)

    def step(self, batch: dict[str, torch.Tensor], global_step: int) -> StepOutput:
        """One optimizer step on this rank's ``batch``; ``global_step`` is the same on every rank."""
        cfg, raw, adatt = self.cfg, self.raw_model, self.adatt
        with autocast_context(cfg, self.device):
            out = self.model(batch)
        losses = task_losses(cfg, out, batch)
        present = {t: bool(batch[f"mask/{t}"].any()) for t in losses}
        self.weighting.before_backward(losses, raw.shared_parameters(), present, self.reduce_mean)
        weighted, extra = self.weighting(losses, present)
        transfer = None
        if adatt is not None and adatt.phase is not Phase.OFF:
            adatt.maybe_update_affinity(
                global_step, weighted, counts={t: batch[f"mask/{t}"].sum() for t in weighted},
                all_reduce_mean=self.reduce_mean, **affinity_target(cfg, raw))
            transfer = lambda w: adatt.transfer_losses(w, present)  # noqa: E731
        total, terms = aggregate_losses(weighted, extra, transfer=transfer, **raw.aux_losses(),
                                        **sidecar_losses(cfg, raw, batch, self.epoch))
        # A task with no label on this rank drops out of `weighted`; keep its tower in the graph
        # (zero gradient) so DDP's reducer sees every parameter on every rank.
        total = total + sum((0.0 * l for t, l in losses.items() if not present[t]), total.new_zeros(()))
        finite = torch.isfinite(total.detach()).float()
        if self.world > 1:  # every rank must agree to skip, or DDP's all-reduce would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        detached = {t: l.detach() for t, l in losses.items()}
        self.optimizer.zero_grad(set_to_none=True)
        if finite.item() < 1:
            return StepOutput(detached, terms, False)
        total.backward()
        self.weighting.sync_gradients(self.reduce_mean)
        if adatt is not None:
            adatt.sync_gradients(self.reduce_mean)
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return StepOutput(detached, terms, True)
