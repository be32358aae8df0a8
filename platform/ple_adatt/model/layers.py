"""The one MLP builder of the model package: experts, towers, the baselines, CGC layers, the task side."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0,
        act: type[nn.Module] = nn.SiLU, out_norm: bool = True) -> nn.Sequential:
    """Linear -> LayerNorm -> act -> Dropout per width in ``hidden``: [B, in_dim] -> [B, hidden[-1]];
    with ``out_dim``, then a Linear head (+ LayerNorm if ``out_norm``): -> [B, out_dim] (spec §5.1, §5.3)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LayerNorm(h), act(), nn.Dropout(dropout)]
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
        if out_norm:
            layers.append(nn.LayerNorm(out_dim))
    return nn.Sequential(*layers)
