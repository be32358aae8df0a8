"""Evidential heads (spec §6.8), off by default, parallel to the towers on the task-expert output.

* Classification: Sensoy, Kaplan & Kandemir, "Evidential Deep Learning to Quantify
  Classification Uncertainty", NeurIPS 2018 (arXiv:1806.01768). Dirichlet α = softplus + 1;
  p̂ = α/S, u = C/S. Loss: the Bayes risk of cross-entropy (their Eq. 4) plus an annealed
  KL(Dir(α̃) ‖ Dir(1)) with Sensoy's α̃ = y + (1 − y)⊙α (spec §11.7). Binary tasks use C = 2.
* Regression: Amini, Schwarting, Soleimany & Rus, "Deep Evidential Regression", NeurIPS 2020
  (arXiv:1910.02600). Normal-Inverse-Gamma (μ, v, α, β); loss NIG NLL + λ·|y − μ|·(2v + α);
  epistemic uncertainty β / (v(α − 1)).

Notation: B batch, D input width, C classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_row.mean()
    return torch.where(mask.bool(), per_row, 0.0).sum() / mask.bool().sum().clamp(min=1)


class DirichletHead(nn.Module):
    """h [B, D] -> dict(alpha [B, C], prob [B, C], uncertainty [B] = C / S)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"DirichletHead needs num_classes >= 2 (binary = 2), got {num_classes}")
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = F.softplus(self.linear(h).float()) + 1.0
        s = alpha.sum(-1, keepdim=True)
        return {"alpha": alpha, "prob": alpha / s, "uncertainty": alpha.shape[-1] / s.squeeze(-1)}


def kl_to_uniform_dirichlet(alpha: torch.Tensor) -> torch.Tensor:
    """KL(Dir(α) ‖ Dir(1, ..., 1)) per row: alpha [B, C] -> [B]."""
    c = alpha.shape[-1]
    s = alpha.sum(-1)
    return (
        torch.lgamma(s) - math.lgamma(c) - torch.lgamma(alpha).sum(-1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s)[:, None])).sum(-1)
    )


def dirichlet_loss(alpha: torch.Tensor, labels: torch.Tensor, epoch: int, anneal_epochs: int = 10,
                   kl_weight: float = 0.01, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha [B, C], labels [B] int -> scalar. KL coefficient kl_weight·min(1, epoch/anneal_epochs)."""
    labels = torch.where(mask.bool(), labels, 0) if mask is not None else labels  # null labels -> any valid id
    y = F.one_hot(labels.long(), alpha.shape[-1]).to(alpha)
    risk = (y * (torch.digamma(alpha.sum(-1, keepdim=True)) - torch.digamma(alpha))).sum(-1)
    alpha_tilde = y + (1 - y) * alpha  # keep only misleading evidence in the KL (Sensoy)
    coef = kl_weight * min(1.0, epoch / anneal_epochs) if anneal_epochs > 0 else kl_weight
    return _masked_mean(risk + coef * kl_to_uniform_dirichlet(alpha_tilde), mask)


class NIGHead(nn.Module):
    """h [B, D] -> dict(mu, v, alpha, beta, uncertainty), each [B]; v, β > 0, α > 1."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 4)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, v, a, b = self.linear(h).float().unbind(-1)
        v, b = F.softplus(v) + 1e-6, F.softplus(b) + 1e-6
        a = F.softplus(a) + 1.0 + 1e-6
        return {"mu": mu, "v": v, "alpha": a, "beta": b, "uncertainty": b / (v * (a - 1))}


def nig_loss(out: dict[str, torch.Tensor], y: torch.Tensor, reg: float = 0.01,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """NIG negative log-likelihood (Amini et al., Eq. 8) + reg·|y − μ|·(2v + α), masked mean."""
    mu, v, a, b = out["mu"], out["v"], out["alpha"], out["beta"]
    y = torch.where(mask.bool(), y.float(), mu.detach()) if mask is not None else y.float()
    omega = 2 * b * (1 + v)
    nll = (0.5 * torch.log(math.pi / v) - a * torch.log(omega) + (a + 0.5) * torch.log(v * (y - mu) ** 2 + omega)
           + torch.lgamma(a) - torch.lgamma(a + 0.5))
    return _masked_mean(nll + reg * (y - mu).abs() * (2 * v + a), mask)
