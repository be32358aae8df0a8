"""Causal expert: compressor -> NOTEARS-style linear SCM step (residual) -> encoder -> [B, out_dim].

z = compress(x) in R^d;  z_hat = z + z (W o W);  out = encode(z_hat).
The DAG regulariser (spec §6.6) is exposed through `regularizer()` so the total loss can add it:
  lambda_dag * h(W) + lambda_sparse * |W o W|_1 + lambda_rec * mean |z - z (W o W)|^2,
with h(W) = tr(exp(W o W)) - d (0 iff the weighted graph W o W is acyclic).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..layers import mlp
from ._io import Batch, FlatInput, any_present, zeros_out


def dag_acyclicity(w: Tensor) -> Tensor:
    """NOTEARS acyclicity h(W) = tr(exp(W o W)) - d for a square W [d, d]; computed in fp32.

    0 for a DAG, > 0 as soon as W has a (weighted) cycle, self-loops included.
    """
    a = (w.float() * w.float())
    return torch.linalg.matrix_exp(a).diagonal().sum() - a.shape[0]


class CausalExpert(nn.Module):
    head = ("encode",)  # output-head submodules: the cheap adaTT affinity target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, latent: int = 32, hidden: int = 128, cat_emb_dim: int = 8,
                 lambda_dag: float = 0.01, lambda_sparse: float = 0.001, lambda_rec: float = 0.5, w_init_std: float = 0.1):
        super().__init__()
        self.out_dim = out_dim
        self.inp = FlatInput(inputs, cat_cardinalities, cat_emb_dim)
        self.cats = dict(cat_cardinalities or {})
        self.compress = mlp(self.inp.dim, (hidden,), latent, dropout, out_norm=False)
        # N(0, 0.1^2): a smaller init let the sparsity term drive W to exactly zero (spec §3.6).
        self.W = nn.Parameter(torch.randn(latent, latent) * w_init_std)
        self.encode = nn.Sequential(nn.Linear(latent, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim), nn.SiLU())
        self.lambdas = {"dag": lambda_dag, "sparse": lambda_sparse, "rec": lambda_rec}
        self._last_z: Tensor | None = None

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inp.inputs, self.cats):
            self._last_z = None
            return zeros_out(batch, self.out_dim)
        z = self.compress(self.inp(batch))          # [B, d]
        self._last_z = z.detach()                   # only the reconstruction term reads it, detached anyway
        a = self.W * self.W                         # [d, d] non-negative weighted adjacency
        return self.encode(z + z @ a)

    def regularizer(self) -> dict[str, Tensor]:
        """Weighted DAG terms for the last forward: {'dag', 'sparse', 'rec'} (scalars; rec is 0 before a forward).

        The reconstruction uses a detached z so it trains W to explain z from its parents without
        pulling the compressor towards z = 0 (which would make every term trivially small).
        """
        a = self.W * self.W
        rec = self.W.new_zeros(())
        if self._last_z is not None:
            z = self._last_z.float()
            rec = (z - z @ a.float()).pow(2).mean()
        return {"dag": self.lambdas["dag"] * dag_acyclicity(self.W), "sparse": self.lambdas["sparse"] * a.sum(),
                "rec": self.lambdas["rec"] * rec}
