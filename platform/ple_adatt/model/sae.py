"""Sparse autoencoder on the shared representation: an analysis sidecar (spec §6.7), off by
default. Tied weights with unit-norm decoder directions and an L1 penalty, in the style of
Bricken et al., "Towards Monosemanticity" (Anthropic, 2023).

Notation: B batch, D shared width, L = expansion·D latents.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SparseAutoencoder(nn.Module):
    """z = ReLU(W (h − b_pre) + b_enc) [B, L]; ĥ = z·normalize(W) + b_pre [B, D].

    The input is detached, so the SAE trains only itself and never shapes the model (weight
    0.01 is applied in ``aggregate_losses``). Decoder = Wᵀ with each latent's direction scaled
    to unit norm, so the L1 penalty cannot be dodged by shrinking z and growing W.
    """

    def __init__(self, in_dim: int, expansion: int = 4, l1: float = 1e-3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(expansion * in_dim, in_dim) / in_dim**0.5)  # [L, D]
        self.b_enc = nn.Parameter(torch.zeros(expansion * in_dim))
        self.b_pre = nn.Parameter(torch.zeros(in_dim))
        self.l1 = l1

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, D] -> (z [B, L], ĥ [B, D], loss 0-dim = mean_b ‖h − ĥ‖² + l1·mean_b ‖z‖₁)."""
        h = h.detach().float()
        z = F.relu((h - self.b_pre) @ self.weight.T + self.b_enc)  # [B, D] x [D, L] -> [B, L]
        recon = z @ F.normalize(self.weight, dim=1) + self.b_pre  # [B, L] x [L, D] -> [B, D]
        loss = (h - recon).pow(2).sum(-1).mean() + self.l1 * z.abs().sum(-1).mean()
        return z, recon, loss
