"""Input plumbing shared by the experts: reading routed groups from a batch, zero fallback.

An expert is constructed from the groups the feature router sends it:
``inputs: {group: shape}`` for float groups (batch key ``feat/<group>``, shape without B) and
``cat_cardinalities: {group: [table size per column]}`` for categorical groups (``cat/<group>``,
int64 [B, C]; index 0 = unknown, so a table size already counts the 0 slot).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

Batch = Mapping[str, Tensor]


def batch_size(batch: Batch) -> int:
    """B of a batch dict (every tensor in it shares the leading dimension)."""
    for v in batch.values():
        if isinstance(v, Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ValueError("batch holds no tensors; cannot infer the batch size")


def batch_device(batch: Batch) -> torch.device:
    for v in batch.values():
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")


def any_present(batch: Batch, inputs: Mapping[str, Sequence[int]],
                cat_cardinalities: Mapping[str, Sequence[int]]) -> bool:
    return any(f"feat/{g}" in batch for g in inputs) or any(f"cat/{g}" in batch for g in cat_cardinalities)


def read_float(batch: Batch, group: str, shape: Sequence[int]) -> Tensor:
    """`feat/<group>` as float32 [B, *shape]; zeros when the group is absent from this batch."""
    x = batch.get(f"feat/{group}")
    if x is None:
        return torch.zeros(batch_size(batch), *shape, device=batch_device(batch))
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"feat/{group}: expected shape [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
    return x.float()


def read_cat(batch: Batch, group: str, n_cols: int) -> Tensor:
    """`cat/<group>` as int64 [B, C]; all-unknown (0) when absent."""
    x = batch.get(f"cat/{group}")
    if x is None:
        return torch.zeros(batch_size(batch), n_cols, dtype=torch.long, device=batch_device(batch))
    if x.dim() != 2 or x.shape[1] != n_cols:
        raise ValueError(f"cat/{group}: expected shape [B, {n_cols}], got {list(x.shape)}")
    return x.long()


def zeros_out(batch: Batch, out_dim: int) -> Tensor:
    """The zero fallback [B, out_dim]; the gate is expected to learn to down-weight it."""
    return torch.zeros(batch_size(batch), out_dim, device=batch_device(batch))


class CatEmbedding(nn.Module):
    """All categorical columns of the routed groups in one table (per-column offsets).

    forward(batch) -> [B, C_total, emb_dim].
    """

    def __init__(self, cat_cardinalities: Mapping[str, Sequence[int]], emb_dim: int):
        super().__init__()
        self.groups = {g: len(c) for g, c in cat_cardinalities.items()}
        cards = [int(c) for cs in cat_cardinalities.values() for c in cs]
        if any(c < 2 for c in cards):
            raise ValueError(f"categorical table sizes must be >= 2 (unknown slot + 1 value), got {dict(cat_cardinalities)}")
        self.n_cols = len(cards)
        self.emb_dim = emb_dim
        offsets = torch.tensor([0] + cards[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("cards", torch.tensor(cards, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(max(sum(cards), 1), emb_dim)
        nn.init.normal_(self.table.weight, std=0.05)

    def forward(self, batch: Batch) -> Tensor:
        idx = torch.cat([read_cat(batch, g, n) for g, n in self.groups.items()], dim=1)  # [B, C]
        # Out-of-vocabulary ids (a vocabulary built on another split) fall back to "unknown".
        idx = torch.where((idx >= 0) & (idx < self.cards), idx, torch.zeros_like(idx))
        return self.table(idx + self.offsets)


class FlatInput(nn.Module):
    """Concatenate routed float groups (flattened) and categorical embeddings: forward -> [B, dim].

    `float_fn` is applied to each float group [B, *shape] before flattening (e.g. a log map).
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 cat_emb_dim: int = 8, float_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.inputs = {g: tuple(int(s) for s in shape) for g, shape in inputs.items()}
        cat_cardinalities = dict(cat_cardinalities or {})
        self.cat = CatEmbedding(cat_cardinalities, cat_emb_dim) if cat_cardinalities else None
        self.float_fn = float_fn
        self.dim = sum(math.prod(s) for s in self.inputs.values()) + (self.cat.n_cols * cat_emb_dim if self.cat else 0)
        if self.dim == 0:
            raise ValueError("FlatInput got no routed groups")

    def forward(self, batch: Batch) -> Tensor:
        parts = []
        for g, shape in self.inputs.items():
            x = read_float(batch, g, shape)
            if self.float_fn is not None:
                x = self.float_fn(x)
            parts.append(x.flatten(1))
        if self.cat is not None:
            parts.append(self.cat(batch).flatten(1))
        return torch.cat(parts, dim=1)


def head_parameters(expert: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of an expert's output head (the submodules its ``head`` names).

    The head is the layer(s) that map the expert's internal features to its output, the
    "last shared layer" GradNorm measures task gradients on (Chen et al., ICML 2018, §3.2).
    A per-task gradient w.r.t. these stops at the head instead of traversing the whole expert
    (GRU, Transformer, Sinkhorn), which makes adaTT's `affinity_on: expert_heads` cheap.
    """
    names = getattr(expert, "head", None)
    if not names:
        raise TypeError(f"{type(expert).__name__} declares no `head` submodules")
    return [p for n in names for p in getattr(expert, n).parameters() if p.requires_grad]
