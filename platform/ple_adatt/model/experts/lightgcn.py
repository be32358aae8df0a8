"""LightGCN expert (online stage): refine MLP with a linear skip over an offline collaborative embedding -> [B, out_dim].

The graph propagation itself (e^(k+1) = D^-1/2 A D^-1/2 e^(k), layer mean, BPR) runs offline; the
routed group carries the resulting customer embedding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ._io import Batch, FlatInput, any_present, zeros_out


class LightGCNExpert(nn.Module):
    head = ("refine", "skip")  # output-head submodules: the cheap adaTT affinity target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, hidden: int = 64, cat_emb_dim: int = 8):
        super().__init__()
        self.out_dim = out_dim
        self.inp = FlatInput(inputs, cat_cardinalities, cat_emb_dim)
        self.cats = dict(cat_cardinalities or {})
        self.refine = nn.Sequential(nn.Linear(self.inp.dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim))
        self.skip = nn.Linear(self.inp.dim, out_dim)

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inp.inputs, self.cats):
            return zeros_out(batch, self.out_dim)
        x = self.inp(batch)
        return self.refine(x) + self.skip(x)
