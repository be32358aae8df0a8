"""The one MLP builder of the model package: experts, towers, the baselines, CGC layers, the task side."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def mlp_signature(seq: nn.Sequential) -> tuple | None:
    """Layer kinds and widths of an ``mlp`` (None if it holds a layer ``stacked_mlp`` cannot run):
    MLPs with one signature can run as one stacked operation."""
    sig = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            sig.append(("linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.LayerNorm):
            sig.append(("norm", tuple(layer.normalized_shape), layer.eps, layer.elementwise_affine))
        elif isinstance(layer, nn.Dropout):
            sig.append(("dropout", layer.p))
        elif type(layer) in (nn.SiLU, nn.ReLU, nn.GELU, nn.Identity):
            sig.append((type(layer).__name__,))
        else:
            return None
    return tuple(sig)


def stacked_mlp(seqs: Sequence[nn.Sequential], x: Tensor) -> Tensor:
    """[seqs[i](x[i]) for i] stacked: x [T, B, D] -> [T, B, H], one batched matmul per Linear.

    Same math, same parameters: the T modules' weights are stacked at call time ([T, out, in]), so
    gradients flow back to each module's own parameters (a module listed twice, e.g. a basket
    encoder shared by a group's tasks, gets the sum, as with two calls); state_dict keys and
    parameter counts do not change. All ``seqs`` must share one ``mlp_signature``. Dropout draws one
    mask over [T, B, H]: independent per task and row as with T calls (other random draws)."""
    for layers in zip(*seqs):
        first = layers[0]
        if isinstance(first, nn.Linear):
            w = torch.stack([m.weight for m in layers])                                  # [T, out, in]
            if first.bias is None:
                x = torch.matmul(x, w.transpose(1, 2))
            else:
                x = torch.baddbmm(torch.stack([m.bias for m in layers]).unsqueeze(1), x, w.transpose(1, 2))
        elif isinstance(first, nn.LayerNorm):
            x = F.layer_norm(x, first.normalized_shape, eps=first.eps)
            if first.elementwise_affine:
                x = torch.addcmul(torch.stack([m.bias for m in layers]).unsqueeze(1), x,
                                  torch.stack([m.weight for m in layers]).unsqueeze(1))
        elif isinstance(first, nn.Dropout):
            x = F.dropout(x, first.p, first.training)
        else:  # a parameter-free activation
            x = first(x)
    return x


def set_batched(model: nn.Module, on: bool) -> int:
    """Switch every block with a stacked and a looped form (``batched`` attribute: the HeteroPLE
    towers, the group basket) to one or the other; returns how many blocks were switched."""
    blocks = [m for m in model.modules() if isinstance(getattr(m, "batched", None), bool)]
    for m in blocks:
        m.batched = on
    return len(blocks)
