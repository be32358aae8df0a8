"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018 (arXiv:1711.02257).

Canonical form (spec §6.3, §11.7), on the balancing weights λ_k = exp(log λ_k):
    G_k = ‖∇_θ λ_k L_k‖ = λ_k ‖∇_θ L_k‖,  Ḡ = mean_k G_k
    L̃_k = L_k / L_k(0),  r_k = L̃_k / mean_j L̃_j      (relative inverse training rate)
    L_grad = Σ_k |G_k − Ḡ·r_k^α|,   Ḡ·r_k^α treated as a constant
Only log λ is updated (one SGD step of size ``lr`` per call), then λ is renormalised so
Σ_k λ_k = T. The fixed task weight is applied on top: weighted_k = w_k·λ_k·L_k, so GradNorm
balances the raw losses and w_k keeps its meaning (it is applied exactly once).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ple_adatt.losses.weighting._common import fixed_weights, present_tasks


class GradNormWeighting(nn.Module):
    """Loss weighting by gradient-norm balancing. All state is buffers (log λ, L(0), step),
    updated only by ``before_backward`` from all-reduced quantities, so ranks stay identical.

    Training-loop contract, every step::

        weighting.before_backward(losses, shared_params, present, all_reduce_mean=f)  # λ moves
        weighted, extra = weighting(losses, present)      # uses the new λ (no grad to λ)
        total, terms = aggregate_losses(weighted, extra, ...)
        total.backward(); optimizer.step()

    ``before_backward`` must run before ``total.backward()`` (it differentiates the same graph
    with ``retain_graph=True``). ``shared_params``: the last shared layer's weights (the
    paper's choice, cheapest: one extra backward per task) or all shared-expert parameters,
    taken from the unwrapped module so DDP's reducer is not triggered. ``all_reduce_mean``:
    averages a tensor over ranks (the same callable adaTT takes); None on one process. It
    reduces a [T, P + 2] tensor (P shared parameters) once per measured step.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        task_weights: Mapping[str, float],
        alpha: float = 1.5,
        lr: float = 0.025,
        interval: int = 1,
    ):
        super().__init__()
        if interval < 1:
            raise ValueError(f"gradnorm interval must be >= 1, got {interval}")
        self.task_names = list(task_names)
        self.alpha, self.lr, self.interval = alpha, lr, interval
        n = len(self.task_names)
        self.register_buffer("w", fixed_weights(self.task_names, task_weights), persistent=False)
        self.register_buffer("log_lambda", torch.zeros(n))
        self.register_buffer("initial_loss", torch.full((n,), float("nan")))  # L_k(0); NaN = not seen yet
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, bool] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Returns (task -> w_k·λ_k·L_k for present tasks, 0-dim zero)."""
        lam = self.w * self.log_lambda.exp()
        idx = {t: i for i, t in enumerate(self.task_names)}
        weighted = {t: lam[idx[t]] * losses[t] for t in present_tasks(self.task_names, losses, present)}
        return weighted, lam.new_zeros(())

    def before_backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Iterable[torch.Tensor],
        present: Mapping[str, bool] | None = None,
        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Update λ from the unweighted losses (scalars still attached to the graph).

        Returns L_grad (0-dim, detached) for logging; 0 on steps skipped by ``interval``.
        Every rank must call it on every step (it all-reduces when ``all_reduce_mean`` is given).

        DDP: G_k is the norm of the GLOBAL gradient of L_k, the mean over ranks of the per-rank
        gradients (a rank without the task contributes zero, exactly as in the gradient DDP
        applies), not a mean of per-rank norms; L_k is the mean over the ranks that saw the task.
        On one process on the global batch this gives the same λ (equal labelled rows per rank).
        """
        self.step += 1
        if int(self.step) % self.interval:
            return self.log_lambda.new_zeros(())
        params = [p for p in shared_params if p.requires_grad]
        if not params:  # two-phase training's phase 2 froze the shared side: nothing to balance, λ stays
            return self.log_lambda.new_zeros(())
        idx = {t: i for i, t in enumerate(self.task_names)}
        n_params = sum(p.numel() for p in params)
        # Row k: [flattened ∇_θ L_k (P) | L_k | seen]; one all-reduce for all of it.
        rows = self.log_lambda.new_zeros(len(self.task_names), n_params + 2)
        for t in present_tasks(self.task_names, losses, present):
            grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
            flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
            if flat:
                rows[idx[t], :n_params] = torch.cat(flat).to(rows.dtype)
            rows[idx[t], n_params] = losses[t].detach().to(rows.dtype)
            rows[idx[t], n_params + 1] = 1.0
        if all_reduce_mean is not None:
            rows = all_reduce_mean(rows)  # gradients: the DDP mean; loss and seen: rank means (ratios are global)
        seen = rows[:, n_params + 1]
        active = seen > 0
        if not active.any():
            return rows.new_zeros(())
        # Loss: mean over the ranks that saw the task (seen is a fraction after a mean all-reduce).
        loss = rows[:, n_params] / torch.where(active, seen, torch.ones_like(seen))
        gnorm = rows[:, :n_params].norm(dim=1)
        first = active & self.initial_loss.isnan()
        self.initial_loss[first] = loss[first]
        rate = loss[active] / self.initial_loss[active].clamp(min=1e-12)
        r = rate / rate.mean()
        log_lam = self.log_lambda.clone().requires_grad_(True)
        with torch.enable_grad():
            g_weighted = log_lam.exp()[active] * gnorm[active]  # G_k = λ_k ‖∇L_k‖
            target = (g_weighted.mean() * r.pow(self.alpha)).detach()  # constant, as in the paper
            l_grad = (g_weighted - target).abs().sum()
            (d_log_lam,) = torch.autograd.grad(l_grad, log_lam)
        new = self.log_lambda - self.lr * d_log_lam
        # Renormalise Σλ = T in log space: λ_k <- T·λ_k / Σλ.
        self.log_lambda.copy_(new - torch.logsumexp(new, 0) + math.log(len(new)))
        return l_grad.detach()

    def weights(self) -> dict[str, float]:
        """Effective multipliers w_k·λ_k."""
        return dict(zip(self.task_names, (self.w * self.log_lambda.exp()).tolist()))

    def on_epoch_end(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """No epoch state: λ moves per step."""

    def sync_gradients(self, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Nothing to sync: λ is a buffer updated identically on every rank by ``before_backward``."""
