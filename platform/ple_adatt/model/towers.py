"""Task towers: the last task-private MLP, emitting logits (spec §5.3, §11.11, §11.14).

Notation: B batch, D input width, C classes, N catalogue size, M embedding width.
Towers never apply an output activation: losses take logits. ``activate`` turns logits into
the prediction a user (or logit transfer, spec §5.2) sees.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple_adatt.model.layers import mlp, mlp_signature, stacked_mlp

TASK_TYPES = ("binary", "multiclass", "regression", "contrastive")


def activate(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> prediction: sigmoid prob [B] (binary), softmax [B, C] (multiclass,
    contrastive), identity [B] (regression)."""
    if task_type == "binary":
        return torch.sigmoid(logits)
    if task_type in ("multiclass", "contrastive"):
        return torch.softmax(logits, dim=-1)
    if task_type == "regression":
        return logits
    raise ValueError(f"unknown task type {task_type!r}; valid: {list(TASK_TYPES)}")


class TaskTower(nn.Module):
    """h [B, D] -> logits [B] if out_dim == 1 (binary, regression) else [B, C] (multiclass).

    Args:
        in_dim: width of the task-expert output (32 in the seed).
        out_dim: 1 for binary/regression, C for multiclass.
        hidden_dims: block widths; spec default [64, 32].
        dropout: per-block dropout (0.2 in G1).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int] = (64, 32), dropout: float = 0.2):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"TaskTower out_dim must be >= 1, got {out_dim}")
        self.body = mlp(in_dim, hidden_dims, dropout=dropout)
        self.head = nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.body(h))  # [B, out_dim]
        # Scalar tasks squeeze to [B] so they line up with label/<task> [B].
        return logits.squeeze(-1) if self.out_dim == 1 else logits


class ContrastiveTower(nn.Module):
    """Embedding tower scored against a learnable catalogue table (spec §11.14).

    q = normalize(Linear(MLP(h))) [B, M]; table E [N, M] is L2-normalised too, so q·Eᵀ is a
    cosine in [-1, 1] and τ alone sets the logit scale (with τ = 0.07 an unnormalised table
    would let logits grow without bound). ``forward`` returns logits over the whole catalogue
    [B, N] = q·Eᵀ/τ, so evaluation can treat the task like multiclass (top-k, NDCG);
    ``embed`` + ``keys`` feed sampled or in-batch InfoNCE when N is large.

    Args:
        in_dim: task-expert width; num_items: catalogue size N; embed_dim: M (128 in G1);
        hidden_dims: MLP widths ([64, 64] in G1); tau: temperature (0.07).
    """

    def __init__(
        self,
        in_dim: int,
        num_items: int,
        embed_dim: int = 128,
        hidden_dims: Sequence[int] = (64, 64),
        dropout: float = 0.2,
        tau: float = 0.07,
    ):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"ContrastiveTower tau must be > 0, got {tau}")
        self.body = mlp(in_dim, hidden_dims, dropout=dropout)
        self.proj = nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, embed_dim)
        self.table = nn.Parameter(torch.randn(num_items, embed_dim) / embed_dim**0.5)
        self.tau = tau

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, D] -> unit-norm query q [B, M]."""
        return F.normalize(self.proj(self.body(h)), dim=-1)

    def keys(self) -> torch.Tensor:
        """Unit-norm catalogue embeddings [N, M]."""
        return F.normalize(self.table, dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.embed(h) @ self.keys().T / self.tau  # [B, M] x [M, N] -> [B, N]



def tower_signature(tower: nn.Module) -> tuple | None:
    """What towers must share to run as one stacked operation (None: not stackable): the TaskTower
    class itself, its body's layers (model/layers.mlp_signature) and its head's input width."""
    if type(tower) is not TaskTower:
        return None
    body = mlp_signature(tower.body)
    return None if body is None else (*body, ("head", tower.head.in_features))


def stackable_groups(signatures: Mapping[str, tuple | None], tasks: Sequence[str]) -> list[list[str]]:
    """``tasks`` split into groups with one signature (``tower_signature`` or ``mlp_signature``),
    in ``tasks`` order; a task whose signature is None is a group of one."""
    groups: dict[tuple, list[str]] = {}
    out: list[list[str]] = []
    for t in tasks:
        sig = signatures[t]
        if sig is None:
            out.append([t])
        elif sig in groups:
            groups[sig].append(t)
        else:
            groups[sig] = [t]
            out.append(groups[sig])
    return out


def stacked_towers(towers: Sequence[TaskTower], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[towers[i](xs[i]) for i] as one batched matmul per layer (model/layers.stacked_mlp); heads of
    different widths are zero-padded to the widest and sliced back. xs[i]: [B, D]; returns what each
    TaskTower returns ([B] or [B, C])."""
    x = stacked_mlp([t.body for t in towers], torch.stack(list(xs)))                          # [T, B, H]
    width = max(t.out_dim for t in towers)
    w = torch.stack([F.pad(t.head.weight, (0, 0, 0, width - t.out_dim)) for t in towers])   # [T, C_max, H]
    b = torch.stack([F.pad(t.head.bias, (0, width - t.out_dim)) for t in towers])            # [T, C_max]
    y = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))                                  # [T, B, C_max]
    return [y[i, :, 0] if t.out_dim == 1 else y[i, :, : t.out_dim] for i, t in enumerate(towers)]
