"""Unified H-GCN expert (online stage): Poincaré hierarchy coordinates -> log map -> residual refine -> [B, 128].

The hyperbolic embeddings are computed offline (spec §3.3); each routed float group is one Poincaré ball
(curvature -1) whose last axis holds the coordinates. The log map at the origin turns them into tangent
vectors, where a Euclidean MLP is meaningful. The output layer has no activation (as on-prem).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._io import Batch, FlatInput, any_present, zeros_out

_MAX_NORM = 1.0 - 1e-5


def poincare_log0(x: Tensor) -> Tensor:
    """Log map at the origin of the unit Poincaré ball, over the last axis: x -> artanh(|x|) x / |x|.

    Points on or outside the ball are first pulled to radius 1 - 1e-5 (artanh would be infinite).
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = x * (norm.clamp_max(_MAX_NORM) / norm)
    norm = norm.clamp_max(_MAX_NORM)
    return torch.atanh(norm) * x / norm


class HGCNExpert(nn.Module):
    head = ("out",)  # output-head submodules: the cheap adaTT affinity target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 128, dropout: float = 0.1, hidden: int = 128, cat_emb_dim: int = 8):
        super().__init__()
        self.out_dim = out_dim
        self.inp = FlatInput(inputs, cat_cardinalities, cat_emb_dim, float_fn=poincare_log0)
        self.cats = dict(cat_cardinalities or {})
        self.lift = nn.Linear(self.inp.dim, hidden)
        self.refine = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inp.inputs, self.cats):
            return zeros_out(batch, self.out_dim)
        h = self.lift(self.inp(batch))
        return self.out(h + self.refine(h))
