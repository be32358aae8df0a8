"""Temporal ensemble expert: GRU -> liquid (LNN) Euler step, plus a patch Transformer; softmax-gated to [B, out_dim].

The spec's minimal faithful version (§3.2): a recurrent branch whose final state gets one Euler step of the
liquid ODE dh/dt = (-h + tanh(W[x; h])) / tau(x, h), tau = softplus(MLP) + 0.1 (so GRU and LNN are serial),
and a PatchTST-style branch in parallel. A GRU stands in for Mamba: same role, far cheaper on CPU.
The patch branch ends in PatchTST's flatten head (all patch tokens -> Linear), not a mean over patches:
pooling would discard *where* in the sequence something happened (e.g. which day spending peaked).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._io import Batch, any_present, read_float, zeros_out


class TemporalExpert(nn.Module):
    """Routed [T, F] sequence groups (concatenated on F; must share T) and optional 1-D groups
    (broadcast to every step as static context) -> [B, out_dim].

    `last_branch_weights` holds the detached [3] batch-mean gate over `branches` (gru, lnn, patch)
    of the last batch, for entropy monitoring.
    """

    branches = ("gru", "lnn", "patch")

    head = ("proj", "gate", "norm")  # branch projections + fusion: the adaTT head target (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, hidden: int = 64, d_model: int = 32, patch_len: int = 8,
                 n_heads: int = 2, n_layers: int = 1, dt: float = 1.0):
        super().__init__()
        if cat_cardinalities:
            raise ValueError(f"temporal expert takes float groups only; categorical groups routed to it: {sorted(cat_cardinalities)}")
        self.out_dim = out_dim
        self.inputs = {g: tuple(int(s) for s in shape) for g, shape in inputs.items()}
        self.seq_groups = [g for g, s in self.inputs.items() if len(s) == 2]
        self.static_groups = [g for g, s in self.inputs.items() if len(s) == 1]
        if not self.seq_groups:
            raise ValueError(f"temporal expert needs at least one sequence group of shape [T, F]; routed: {self.inputs}")
        lengths = {g: self.inputs[g][0] for g in self.seq_groups}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"temporal expert: sequence groups must share T, got {lengths}")
        self.T = next(iter(lengths.values()))
        n_feat = sum(self.inputs[g][1] for g in self.seq_groups) + sum(self.inputs[g][0] for g in self.static_groups)
        self.dt = dt

        self.gru = nn.GRU(n_feat, hidden, batch_first=True)
        # Liquid cell: one Euler step on the GRU's final state, driven by the last input step.
        self.lnn_f = nn.Linear(n_feat + hidden, hidden)
        self.lnn_tau = nn.Sequential(nn.Linear(n_feat + hidden, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, hidden))

        self.patch_len = min(patch_len, self.T)
        self.n_patches = math.ceil(self.T / self.patch_len)
        self.patch_embed = nn.Linear(self.patch_len * n_feat, d_model)
        self.pos = nn.Parameter(torch.randn(self.n_patches, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

        self.proj = nn.ModuleDict({"gru": nn.Linear(hidden, out_dim), "lnn": nn.Linear(hidden, out_dim),
                                   "patch": nn.Linear(self.n_patches * d_model, out_dim)})
        self.gate = nn.Sequential(nn.Linear(3 * out_dim, 32), nn.SiLU(), nn.Linear(32, 3))
        self.norm = nn.LayerNorm(out_dim)
        self.drop = nn.Dropout(dropout)
        self.last_branch_weights: Tensor | None = None

    def sequence(self, batch: Batch) -> Tensor:
        """batch -> x [B, T, F_total]: sequence groups side by side, static groups repeated over T."""
        parts = [read_float(batch, g, self.inputs[g]) for g in self.seq_groups]
        for g in self.static_groups:
            parts.append(read_float(batch, g, self.inputs[g]).unsqueeze(1).expand(-1, self.T, -1))
        return torch.cat(parts, dim=2)

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inputs, {}):
            return zeros_out(batch, self.out_dim)
        x = self.sequence(batch)                                        # [B, T, F]
        _, h = self.gru(x)
        h = h[-1]                                                       # [B, H] final state
        xh = torch.cat([x[:, -1], h], dim=1)                            # [B, F + H]
        tau = F.softplus(self.lnn_tau(xh)) + 0.1
        h_lnn = h + self.dt * (-h + torch.tanh(self.lnn_f(xh))) / tau   # one Euler step of the liquid ODE

        pad = self.n_patches * self.patch_len - self.T
        xp = F.pad(x, (0, 0, pad, 0))                                   # left-pad so the last patch ends at T
        patches = xp.reshape(x.shape[0], self.n_patches, -1)           # [B, P, patch_len * F]
        z = self.encoder(self.patch_embed(patches) + self.pos).flatten(1)  # [B, P * d_model]: keeps positions

        outs = torch.stack([self.proj["gru"](h), self.proj["lnn"](h_lnn), self.proj["patch"](z)], dim=1)  # [B, 3, D]
        w = torch.softmax(self.gate(outs.flatten(1)), dim=-1)           # [B, 3]
        self.last_branch_weights = w.detach().mean(0)
        return self.norm(self.drop((w.unsqueeze(-1) * outs).sum(1)))
