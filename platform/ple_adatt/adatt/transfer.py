"""Transfer weights and the transfer-enhanced loss (spec §7.2–§7.4, with the §11.4 masking fix).

Notation: T tasks; row i of every [T, T] matrix is the *target* task, column j the *source*.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def group_prior(
    task_names: Sequence[str],
    task_groups: Mapping[str, str] | None = None,
    intra_strength: Mapping[str, float] | None = None,
    inter_strength: float = 0.3,
    default_intra_strength: float = 0.5,
) -> Tensor:
    """Group prior P [T, T]: intra-group strength within a group, ``inter_strength`` across,
    zero diagonal, rows normalised to sum to 1 (row sums clamped at >= 1e-8, so T=1 gives 0).

    task_groups: task -> group name (tasks without a group only get ``inter_strength``).
    intra_strength: group -> strength; groups missing here use ``default_intra_strength``.
    """
    task_groups = dict(task_groups or {})
    intra_strength = dict(intra_strength or {})
    unknown = sorted(set(task_groups) - set(task_names))
    if unknown:
        raise KeyError(f"task_groups names unknown tasks {unknown}; known: {list(task_names)}")
    unused = sorted(set(intra_strength) - set(task_groups.values()))
    if unused:
        raise KeyError(f"intra_strength names groups with no task {unused}; groups: {sorted(set(task_groups.values()))}")
    t = len(task_names)
    prior = torch.full((t, t), float(inter_strength))
    for i, a in enumerate(task_names):
        for j, b in enumerate(task_names):
            g = task_groups.get(a)
            if i != j and g is not None and g == task_groups.get(b):
                prior[i, j] = float(intra_strength.get(g, default_intra_strength))
    prior.fill_diagonal_(0.0)
    return prior / prior.sum(dim=1, keepdim=True).clamp_min(1e-8)


def transfer_weights(
    W: Tensor,
    affinity: Tensor,
    prior: Tensor,
    blend_ratio: float,
    present: Tensor,
    neg_threshold: float = -0.1,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Transfer weights w [T, T] and the allowed-pair mask [T, T] (bool).

    R = (W + A)(1 - r) + P r; pairs with A <= tau_neg, the diagonal and absent source tasks are
    set to -inf *before* the softmax (the seed wrote 0, and exp(0) = 1 leaks weight, spec §11.4);
    w_i = softmax_j(R_ij / temperature). Rows of absent targets and rows with no allowed source
    are all zero (zero transfer), with no NaN in forward or backward.
    present: [T] bool, task has a loss in this batch.
    """
    t = W.shape[0]
    logits = ((W + affinity) * (1.0 - blend_ratio) + prior * blend_ratio) / temperature
    eye = torch.eye(t, dtype=torch.bool, device=W.device)
    allowed = (affinity > neg_threshold) & ~eye & present[None, :] & present[:, None]
    row_ok = allowed.any(dim=1, keepdim=True)                            # [T, 1]
    # A fully masked row would be softmax(-inf...) = NaN; give it finite logits, then zero it.
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~row_ok, 0.0)
    return torch.softmax(logits, dim=1) * row_ok, allowed


def transfer_enhanced_losses(
    losses: Tensor,
    weights: Tensor,
    transfer_lambda: float = 0.1,
    max_transfer_ratio: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_i + min(lambda * sum_j w_ij L_j, rho * stopgrad(L_i))  (the G-01 clamp).

    losses: [T] non-negative (absent tasks may hold any finite value; their weights are zero).
    weights: [T, T] from ``transfer_weights``.
    Returns (enhanced [T], transfer term after the clamp [T], clamped [T] bool).
    When clamped, the transfer term is a constant: it carries no gradient that step.
    """
    raw = transfer_lambda * (weights @ losses)                           # [T]
    cap = max_transfer_ratio * losses.detach()
    clamped = raw > cap
    transfer = torch.minimum(raw, cap)
    return losses + transfer, transfer, clamped
