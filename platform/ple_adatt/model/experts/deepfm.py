"""DeepFM expert (Guo et al. 2017): field embeddings -> FM second-order term + deep MLP -> fused [B, out_dim].

Fields: each column of a small 1-D float group (x_j * v_j, the classic dense-field embedding),
a single Linear field for wider or sequence groups, and each categorical column.
Without field partitioning the FM term degenerates, so fields are never merged.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..layers import mlp
from ._io import Batch, CatEmbedding, any_present, read_float, zeros_out


class DeepFMExpert(nn.Module):
    head = ("fuse",)  # output-head submodules: the cheap adaTT affinity target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, emb_dim: int = 16, hidden: Sequence[int] = (128,),
                 deep_dim: int = 64, max_column_fields: int = 32):
        super().__init__()
        self.out_dim = out_dim
        self.inputs = {g: tuple(int(s) for s in shape) for g, shape in inputs.items()}
        self.cats = dict(cat_cardinalities or {})
        # Per-column fields for small 1-D groups; one Linear field for the rest.
        self.column_groups = [g for g, s in self.inputs.items() if len(s) == 1 and s[0] <= max_column_fields]
        n_col = sum(self.inputs[g][0] for g in self.column_groups)
        self.col_v = nn.Parameter(torch.randn(n_col, emb_dim) * 0.05) if n_col else None  # [F_col, k]
        self.col_b = nn.Parameter(torch.zeros(n_col, emb_dim)) if n_col else None
        self.group_fields = nn.ModuleDict({g: nn.Linear(math.prod(s), emb_dim)
                                           for g, s in self.inputs.items() if g not in self.column_groups})
        self.cat = CatEmbedding(self.cats, emb_dim) if self.cats else None
        self.n_fields = n_col + len(self.group_fields) + (self.cat.n_cols if self.cat else 0)
        if self.n_fields == 0:
            raise ValueError("DeepFM expert got no routed groups")
        self.deep = mlp(self.n_fields * emb_dim, hidden, deep_dim, dropout)
        self.fuse = nn.Sequential(nn.Linear(emb_dim + deep_dim, out_dim), nn.LayerNorm(out_dim), nn.SiLU())

    def fields(self, batch: Batch) -> Tensor:
        """batch -> field embeddings [B, F, k]."""
        parts = []
        if self.col_v is not None:
            x = torch.cat([read_float(batch, g, self.inputs[g]) for g in self.column_groups], dim=1)  # [B, F_col]
            parts.append(x.unsqueeze(-1) * self.col_v + self.col_b)
        for g, lin in self.group_fields.items():
            parts.append(lin(read_float(batch, g, self.inputs[g]).flatten(1)).unsqueeze(1))
        if self.cat is not None:
            parts.append(self.cat(batch))
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inputs, self.cats):
            return zeros_out(batch, self.out_dim)
        e = self.fields(batch)                                   # [B, F, k]
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1))           # [B, k]: sum_{i<j} <e_i, e_j> per dim, O(F k)
        deep = self.deep(e.flatten(1))                           # [B, deep_dim]
        return self.fuse(torch.cat([fm, deep], dim=1))
