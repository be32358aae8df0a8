"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 (arXiv:1803.10704), Eq. 7.

λ_k(t) = K·exp(r_k(t−1)/T) / Σ_j exp(r_j(t−1)/T),  r_k(t−1) = L̄_k(t−1) / L̄_k(t−2),
with L̄ the epoch-mean loss and λ_k = 1 for the first two epochs. This is the paper's form
(spec §6.4, §11.7), not the repo's per-batch, un-scaled variant.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ple_adatt.losses.weighting._common import fixed_weights, present_tasks


class DWAWeighting(nn.Module):
    """weighted_k = w_k·λ_k·L_k; λ changes only in ``on_epoch_end``.

    DDP: pass epoch means all-reduced across ranks (sum of losses / number of batches over all
    ranks), so every rank computes the same λ. State (two epochs of means, λ) is in buffers.
    A task with no loss in an epoch (absent from the dict, or NaN) gets r_k = 1 until it has
    two consecutive epochs again.
    """

    def __init__(self, task_names: Sequence[str], task_weights: Mapping[str, float], temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.task_names = list(task_names)
        self.temperature = temperature
        n = len(self.task_names)
        self.register_buffer("w", fixed_weights(self.task_names, task_weights), persistent=False)
        self.register_buffer("history", torch.full((2, n), float("nan")))  # rows: L̄(t−2), L̄(t−1)
        self.register_buffer("lam", torch.ones(n))

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, bool] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Returns (task -> w_k·λ_k·L_k for present tasks, 0-dim zero)."""
        lam = self.w * self.lam
        idx = {t: i for i, t in enumerate(self.task_names)}
        weighted = {t: lam[idx[t]] * losses[t] for t in present_tasks(self.task_names, losses, present)}
        return weighted, lam.new_zeros(())

    def before_backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor],
                        present: Mapping[str, bool] | None = None,
                        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """No per-step update: λ moves in ``on_epoch_end``. Returns a 0-dim zero."""
        return self.w.new_zeros(())

    @torch.no_grad()
    def on_epoch_end(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """epoch_mean_losses: task -> all-reduced mean UNWEIGHTED loss of the finished epoch."""
        unknown = sorted(set(epoch_mean_losses) - set(self.task_names))
        if unknown:
            raise KeyError(f"epoch losses for unknown tasks {unknown}; tasks: {self.task_names}")
        latest = torch.tensor([float(epoch_mean_losses.get(t, math.nan)) for t in self.task_names])
        self.history.copy_(torch.stack([self.history[1], latest.to(self.history)]))
        ratio = self.history[1] / self.history[0]
        ratio = torch.where(ratio.isfinite(), ratio, torch.ones_like(ratio))  # undefined -> neutral
        self.lam.copy_(len(self.task_names) * torch.softmax(ratio / self.temperature, 0))

    def weights(self) -> dict[str, float]:
        """Effective multipliers w_k·λ_k."""
        return dict(zip(self.task_names, (self.w * self.lam).tolist()))

    def sync_gradients(self, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """No parameters: λ is a buffer computed from all-reduced epoch means."""
