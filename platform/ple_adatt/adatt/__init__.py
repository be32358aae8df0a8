"""adaTT: adaptive task transfer at the loss level (spec §7; a TAG + GradNorm hybrid, not Li et al.'s AdaTT).

Notation: T tasks, P shared parameters. Row i of a [T, T] matrix is the target task, column j the source.

Loop contract (every rank, same order; see docs/adatt.md):
    adatt.on_epoch_start(epoch, phase1_epochs)                       # each phase-1 epoch
    losses = weighted non-negative per-task losses (absent tasks omitted)
    adatt.maybe_update_affinity(step, losses, params=shared, counts=n, all_reduce_mean=f)
    enhanced, diag = adatt.transfer_losses(losses, present)
    (sum(enhanced.values()) + other terms).backward(); adatt.sync_gradients(f); optimizer.step()
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .affinity import AllReduceMean, TaskAffinityComputer, per_task_gradients
from .diagnostics import (blocked_fraction, negative_transfer_pairs, save_heatmap,
                          transfer_entropy)
from .schedule import AdaTTSchedule, Phase, resolve_schedule
from .transfer import group_prior, transfer_enhanced_losses, transfer_weights

__all__ = ["AdaTT", "AdaTTSchedule", "Phase", "TaskAffinityComputer", "group_prior",
           "negative_transfer_pairs", "per_task_gradients", "resolve_schedule", "save_heatmap",
           "transfer_enhanced_losses", "transfer_weights"]


class AdaTT(nn.Module):
    """Affinity measurement + transfer weights + three-phase schedule, with exact-resume state.

    Persistent state (``state_dict``): ``W`` [T, T] (learnable, zero init), the affinity EMA,
    per-pair observation counts and update count, ``phase``, ``frozen``, ``blend_ratio``,
    ``epoch`` and the resolved ``warmup_epochs`` / ``freeze_epoch``. The group prior is derived
    from the constructor arguments and not saved. Defaults: spec §7.6.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        task_groups: Mapping[str, str] | None = None,
        intra_strength: Mapping[str, float] | None = None,
        inter_strength: float = 0.3,
        default_intra_strength: float = 0.5,
        transfer_lambda: float = 0.1,
        temperature: float = 1.0,
        ema_decay: float = 0.9,
        neg_threshold: float = -0.1,
        max_transfer_ratio: float = 0.5,
        grad_interval: int = 10,
        prior_blend_start: float = 0.5,
        prior_blend_end: float = 0.1,
        warmup_epochs: int | None = None,
        freeze_epoch: int | None = None,
        warmup_fraction: float = 0.3,
        freeze_fraction: float = 0.8,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"adatt temperature must be > 0, got {temperature}")
        if grad_interval < 1:
            raise ValueError(f"adatt grad_interval must be >= 1, got {grad_interval}")
        if transfer_lambda < 0 or max_transfer_ratio < 0:
            raise ValueError(f"adatt transfer_lambda and max_transfer_ratio must be >= 0, "
                             f"got {transfer_lambda} / {max_transfer_ratio}")
        self.task_names = list(task_names)
        t = len(self.task_names)
        self.transfer_lambda, self.temperature = transfer_lambda, temperature
        self.neg_threshold, self.max_transfer_ratio = neg_threshold, max_transfer_ratio
        self.grad_interval = grad_interval
        self._schedule_args = dict(warmup_epochs=warmup_epochs, freeze_epoch=freeze_epoch,
                                   warmup_fraction=warmup_fraction, freeze_fraction=freeze_fraction,
                                   r_start=prior_blend_start, r_end=prior_blend_end)
        if warmup_epochs is not None or freeze_epoch is not None:  # fail at build time, not epoch 0
            resolve_schedule(max((freeze_epoch or 0) + 1, 3), **self._schedule_args)

        self.affinity_computer = TaskAffinityComputer(self.task_names, ema_decay)
        self.W = nn.Parameter(torch.zeros(t, t))
        self.register_buffer("prior", group_prior(self.task_names, task_groups, intra_strength,
                                                  inter_strength, default_intra_strength), persistent=False)
        self.register_buffer("phase_id", torch.tensor(int(Phase.WARMUP)))
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("blend_ratio", torch.tensor(float(prior_blend_start)))
        self.register_buffer("epoch", torch.tensor(-1))            # -1: on_epoch_start not called yet
        self.register_buffer("warmup_epochs", torch.tensor(-1))
        self.register_buffer("freeze_epoch", torch.tensor(-1))

    # ---- schedule ----------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return Phase(int(self.phase_id))

    @property
    def affinity(self) -> Tensor:
        """EMA affinity A [T, T] (a buffer; identical on every rank)."""
        return self.affinity_computer.affinity

    def on_epoch_start(self, epoch: int, total_epochs: int) -> Phase:
        """Set phase and blend ratio for the 0-based phase-1 ``epoch`` of ``total_epochs``.

        Call on every rank before the epoch's first step (also after a resume). A disabled
        module (training phase 2) stays OFF. When ``phase`` turns FROZEN the loop freezes the
        CGC attention too (spec §7.5: they share the shared-expert parameters)."""
        if self.phase is Phase.OFF:
            return Phase.OFF
        schedule = resolve_schedule(total_epochs, **self._schedule_args)
        phase = schedule.phase(epoch)
        self.epoch.fill_(epoch)
        self.warmup_epochs.fill_(schedule.warmup_epochs)
        self.freeze_epoch.fill_(schedule.freeze_epoch)
        self.phase_id.fill_(int(phase))
        self.frozen.fill_(phase is Phase.FROZEN)
        self.blend_ratio.fill_(schedule.blend_ratio(epoch))
        return phase

    def disable(self) -> None:
        """Training phase 2: no measurement, no transfer, W gets no gradient. Persisted."""
        self.phase_id.fill_(int(Phase.OFF))
        self.frozen.fill_(True)

    # ---- measurement -------------------------------------------------------------------------
    def maybe_update_affinity(
        self,
        step: int,
        weighted_losses: Mapping[str, Tensor],
        *,
        params: Sequence[Tensor] | None = None,
        representation: Tensor | Sequence[Tensor] | None = None,
        counts: Mapping[str, int | float | Tensor] | None = None,
        all_reduce_mean: AllReduceMean | None = None,
    ) -> bool:
        """Measure affinity when ``step % grad_interval == 0`` in warmup and dynamic phases.

        step: global optimizer step (same on every rank). Call after the forward and before
        ``backward`` (the graph is retained). Returns whether a measurement (and its one
        collective) ran; every rank takes the same decision. See TaskAffinityComputer.update.
        """
        self._check_started()
        if self.phase not in (Phase.WARMUP, Phase.DYNAMIC) or step % self.grad_interval:
            return False
        self.affinity_computer.update(weighted_losses, params=params, representation=representation,
                                      counts=counts, all_reduce_mean=all_reduce_mean)
        return True

    # ---- transfer ----------------------------------------------------------------------------
    def transfer_weights(self, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Current transfer weights w [T, T] and allowed mask [T, T]; present [T] bool (default all).

        W carries gradient only in the dynamic phase (frozen: detached weights, spec §7.5)."""
        if present is None:
            present = torch.ones(len(self.task_names), dtype=torch.bool, device=self.W.device)
        W = self.W if self.phase is Phase.DYNAMIC else self.W.detach()
        w, allowed = transfer_weights(W, self.affinity, self.prior, float(self.blend_ratio), present,
                                      self.neg_threshold, self.temperature)
        return (w if self.phase is Phase.DYNAMIC else w.detach()), allowed

    def transfer_losses(
        self,
        weighted_losses: Mapping[str, Tensor],
        present: Mapping[str, bool | Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Transfer-enhanced losses L_i + min(lambda sum_j w_ij L_j, rho stopgrad(L_i)).

        weighted_losses: task -> non-negative scalar (w_k exp(-s_k) L_k under uncertainty
            weighting, never the term with +s_k, spec §11.6); absent tasks may be omitted.
        present: task -> has labelled rows in this rank's batch (default: the keys given).
        Returns (enhanced: same keys, absent tasks passed through unchanged; diagnostics:
        0-d detached tensors ``adatt/transfer_entropy``, ``adatt/blocked_fraction``,
        ``adatt/transfer_ratio`` (sum of transfer terms / sum of task losses),
        ``adatt/clamped_fraction``; empty outside the dynamic and frozen phases).
        """
        self._check_started()
        if self.phase in (Phase.WARMUP, Phase.OFF):
            return dict(weighted_losses), {}
        unknown = sorted(set(weighted_losses) - set(self.task_names))
        if unknown:
            raise KeyError(f"weighted_losses has unknown tasks {unknown}; known: {self.task_names}")
        if present is None:
            present = {name: True for name in weighted_losses}
        missing = sorted(n for n, p in present.items() if bool(p) and n not in weighted_losses)
        if missing:
            raise KeyError(f"tasks marked present have no loss: {missing}")
        flags = [bool(present.get(n, False)) for n in self.task_names]  # host-side: no per-task syncs
        mask = torch.tensor(flags, device=self.W.device)
        zero = self.W.new_zeros(())
        # Absent losses may be NaN (mean over no rows); 0 * NaN would poison the weighted sum.
        losses = torch.stack([weighted_losses[n].reshape(()).to(zero.dtype) if m else zero
                              for n, m in zip(self.task_names, flags)])                    # [T]
        if bool((losses.detach() < 0).any()):
            bad = [n for n, v in zip(self.task_names, losses.tolist()) if v < 0]
            raise ValueError(f"adaTT needs non-negative task losses (the clamp rho*L_i inverts "
                             f"otherwise, spec §11.6); negative: {bad}")
        w, allowed = self.transfer_weights(mask)
        enhanced, transfer, clamped = transfer_enhanced_losses(losses, w, self.transfer_lambda,
                                                               self.max_transfer_ratio)
        out = dict(weighted_losses)
        for i, (name, m) in enumerate(zip(self.task_names, flags)):
            if m:
                out[name] = enhanced[i]
        n_present = mask.sum().clamp_min(1)
        diagnostics = {
            "adatt/transfer_entropy": transfer_entropy(w, allowed),
            "adatt/blocked_fraction": blocked_fraction(self.affinity, mask, self.neg_threshold),
            "adatt/transfer_ratio": (transfer.detach().sum() / losses.detach().sum().clamp_min(1e-12)),
            "adatt/clamped_fraction": (clamped & mask).sum() / n_present,
        }
        return out, diagnostics

    def sync_gradients(self, all_reduce_mean: AllReduceMean | None) -> None:
        """Average W's gradient over ranks (AdaTT lives outside the DDP-wrapped model).

        Call on every rank after ``backward`` and before ``optimizer.step``; the collective runs
        in the dynamic phase only (every rank is in the same phase)."""
        if all_reduce_mean is None or self.phase is not Phase.DYNAMIC:
            return
        grad = self.W.grad if self.W.grad is not None else torch.zeros_like(self.W)
        self.W.grad = all_reduce_mean(grad)

    # ---- per-epoch diagnostics ---------------------------------------------------------------
    def negative_transfer(self) -> list[tuple[str, str, float]]:
        """(target, source, A_ij) pairs with A_ij <= tau_neg: the blocked pairs. Log per epoch."""
        return negative_transfer_pairs(self.affinity, self.task_names, self.neg_threshold)

    def save_heatmaps(self, directory: str | Path, epoch: int) -> list[Path]:
        """Affinity and transfer-weight (all tasks present) heatmaps for this epoch (rank 0 only)."""
        directory = Path(directory)
        w, _ = self.transfer_weights()
        return [
            save_heatmap(self.affinity, self.task_names, directory / f"adatt_affinity_e{epoch:03d}.png",
                         f"task affinity A (epoch {epoch})", vmin=-1.0, vmax=1.0),
            save_heatmap(w, self.task_names, directory / f"adatt_transfer_e{epoch:03d}.png",
                         f"transfer weights w (epoch {epoch}, phase {self.phase.name.lower()})", vmin=0.0),
        ]

    def _check_started(self) -> None:
        if int(self.epoch) < 0 and self.phase is not Phase.OFF:
            raise RuntimeError("AdaTT.on_epoch_start(epoch, total_epochs) must be called before the first step")

    def extra_repr(self) -> str:
        return (f"tasks={len(self.task_names)}, lambda={self.transfer_lambda}, T={self.temperature}, "
                f"tau_neg={self.neg_threshold}, rho={self.max_transfer_ratio}, "
                f"grad_interval={self.grad_interval}, phase={self.phase.name}")
