"""PersLay expert (Carrière et al. 2020): persistence diagrams and/or TDA summary vectors -> [B, out_dim].

Diagram groups are routed float groups of shape [P, 2] (birth, death) or [P, 3] (birth, death, homology
dim). Per homology dimension h: PersLay_h(D) = sum_{(b,d) in D} w(b,d) * phi(b,d) with a RationalHat phi
(Q learnable centres and radii) and persistence weighting w = |d - b|^p. The sum makes it invariant to the
order of points; padding points with birth == death get weight 0, so zero padding needs no mask.
Any other routed float group is a pre-computed TDA summary vector and goes through an MLP.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import mlp
from ._io import Batch, any_present, read_float, zeros_out


class RationalHat(nn.Module):
    """phi_q(x) = 1/(1 + |x - c_q|_1) - 1/(1 + ||r_q| - |x - c_q|_1|):  points [..., 2] -> [..., Q]."""

    def __init__(self, n_centres: int = 16):
        super().__init__()
        self.centres = nn.Parameter(torch.rand(n_centres, 2))
        self.radius = nn.Parameter(torch.full((n_centres,), 0.5))

    def forward(self, pts: Tensor) -> Tensor:
        dist = (pts.unsqueeze(-2) - self.centres).abs().sum(-1)   # [..., Q] L1 distance to every centre
        return 1.0 / (1.0 + dist) - 1.0 / (1.0 + (self.radius.abs() - dist).abs())


def is_diagram(shape: Sequence[int]) -> bool:
    return len(shape) == 2 and shape[-1] in (2, 3)


class PersLayExpert(nn.Module):
    head = ("rho",)  # output-head submodules: the cheap adaTT affinity target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, n_centres: int = 16, max_homology: int = 3,
                 power: float = 1.0, summary_hidden: Sequence[int] = (128,), summary_dim: int = 64, hidden: int = 64):
        super().__init__()
        if cat_cardinalities:
            raise ValueError(f"perslay expert takes float groups only; categorical groups routed to it: {sorted(cat_cardinalities)}")
        self.out_dim = out_dim
        self.inputs = {g: tuple(int(s) for s in shape) for g, shape in inputs.items()}
        self.diagram_groups = [g for g, s in self.inputs.items() if is_diagram(s)]
        self.summary_groups = [g for g, s in self.inputs.items() if not is_diagram(s)]
        self.max_homology = max_homology
        self.power = power
        self.phi = nn.ModuleDict({g: RationalHat(n_centres) for g in self.diagram_groups})
        n_summary = sum(math.prod(self.inputs[g]) for g in self.summary_groups)
        self.summary = mlp(n_summary, summary_hidden, summary_dim, dropout) if n_summary else None
        width = len(self.diagram_groups) * max_homology * n_centres + (summary_dim if self.summary else 0)
        self.rho = mlp(width, (hidden,), out_dim, dropout)

    def diagram_vector(self, group: str, dgm: Tensor) -> Tensor:
        """dgm [B, P, 2|3] -> [B, H * Q]: weighted RationalHat sums, one block per homology dimension."""
        bd = dgm[..., :2]
        w = (bd[..., 1] - bd[..., 0]).abs().pow(self.power)                             # [B, P]
        if dgm.shape[-1] == 3:
            hom = dgm[..., 2].round().long().clamp(0, self.max_homology - 1)
        else:
            hom = torch.zeros_like(w, dtype=torch.long)
        onehot = F.one_hot(hom, self.max_homology).to(w.dtype)                          # [B, P, H]
        phi = self.phi[group](bd)                                                       # [B, P, Q]
        return torch.einsum("bp,bph,bpq->bhq", w, onehot, phi).flatten(1)               # [B, H*Q]

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inputs, {}):
            return zeros_out(batch, self.out_dim)
        parts = [self.diagram_vector(g, read_float(batch, g, self.inputs[g])) for g in self.diagram_groups]
        if self.summary is not None:
            parts.append(self.summary(torch.cat([read_float(batch, g, self.inputs[g]).flatten(1)
                                                 for g in self.summary_groups], dim=1)))
        return self.rho(torch.cat(parts, dim=1))
