"""Homoscedastic uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018 (arXiv:1705.07115).

Implemented form (spec §6.2, the G1/G2 code): L = Σ_k w_k (exp(−s_k) L_k + s_k), s_k = log σ_k²
learnable, initialised to 0 and clamped to [−4, 4]. The precision clamp [1e-3, 100] of the
spec never binds inside that range (exp(±4) ∈ [0.018, 54.6]), so it is not repeated.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ple_adatt.losses.weighting._common import fixed_weights, present_tasks


class UncertaintyWeighting(nn.Module):
    """weighted_k = w_k·exp(−s_k)·L_k (non-negative: what adaTT consumes, spec §11.6);
    extra = Σ_k w_k·s_k over present tasks.

    DDP: ``log_vars`` [T] is an ordinary parameter, trained by the main optimizer (put it in
    a no-weight-decay group). Its gradient must be averaged across ranks like the model's:
    this module lives outside the DDP-wrapped model, so after ``total.backward()`` and before
    ``optimizer.step()`` the loop calls ``sync_gradients(all_reduce_mean)`` on every rank.
    Absent tasks contribute 0·s_k to ``extra``, so every rank always has a gradient for every
    s_k and the collectives line up.
    """

    def __init__(
        self, task_names: Sequence[str], task_weights: Mapping[str, float], clamp: tuple[float, float] = (-4.0, 4.0)
    ):
        super().__init__()
        self.task_names = list(task_names)
        self.register_buffer("w", fixed_weights(self.task_names, task_weights), persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))
        self.clamp = clamp

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, bool] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        s = self.log_vars.clamp(*self.clamp)  # [T]
        idx = {t: i for i, t in enumerate(self.task_names)}
        names = present_tasks(self.task_names, losses, present)
        weighted = {t: self.w[idx[t]] * torch.exp(-s[idx[t]]) * losses[t] for t in names}
        mask = torch.zeros_like(s)
        mask[[idx[t] for t in names]] = 1.0
        extra = (mask * self.w * s).sum()  # 0·s_k for absent tasks keeps every s_k in the graph
        return weighted, extra

    @torch.no_grad()
    def weights(self) -> dict[str, float]:
        """Effective multipliers w_k·exp(−s_k)."""
        return dict(zip(self.task_names, (self.w * torch.exp(-self.log_vars.clamp(*self.clamp))).tolist()))

    def log_variances(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.log_vars.detach().clamp(*self.clamp).tolist()))

    def before_backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor],
                        present: Mapping[str, bool] | None = None,
                        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """No per-step update: s_k is learned by the optimizer. Returns a 0-dim zero."""
        return self.w.new_zeros(())

    def on_epoch_end(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """No epoch state: s_k is learned by the optimizer."""

    def sync_gradients(self, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Average ``log_vars.grad`` over ranks; call after backward, before optimizer.step()."""
        if all_reduce_mean is None:
            return
        grad = self.log_vars.grad if self.log_vars.grad is not None else torch.zeros_like(self.log_vars)
        self.log_vars.grad = all_reduce_mean(grad)
