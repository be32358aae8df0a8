"""InfoNCE: van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive
Coding", 2018 (arXiv:1807.03748). L = −log exp(q·k⁺/τ) / Σ_i exp(q·k_i/τ), i.e. cross-entropy
over similarity logits (spec §6.1, §11.14).

Notation: B batch, M embedding width, N catalogue size, S sampled negatives. Inputs are used
as given; ``ContrastiveTower`` supplies unit-norm queries and keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean(per_row: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean over rows; a graph-connected 0 when the (masked) batch is empty."""
    return per_row.mean() if per_row.numel() else anchor.sum() * 0.0


def info_nce(query: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, tau: float = 0.07,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """query [B, M], keys [N, M], targets [B] (index of each row's positive key) -> scalar."""
    if mask is not None:  # drop unlabelled rows before CE: their targets may be invalid ids
        query, targets = query[mask.bool()], targets[mask.bool()]
    logits = query @ keys.T / tau  # [B, M] x [M, N] -> [B, N]
    return _mean(F.cross_entropy(logits.float(), targets.long(), reduction="none"), query)


def in_batch_info_nce(query: torch.Tensor, positives: torch.Tensor, tau: float = 0.07,
                      labels: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row i's positive is positives[i] [B, M]; the other rows are its negatives.

    With ``labels`` [B], rows sharing row i's label are removed from its negatives (they are
    the same item, not a negative). Rows with mask False are neither anchors nor keys.
    """
    if mask is not None:
        m = mask.bool()
        query, positives = query[m], positives[m]
        labels = None if labels is None else labels[m]
    logits = query @ positives.T / tau  # [B, B]
    b = logits.shape[0]
    drop = torch.zeros(b, b, dtype=torch.bool, device=logits.device)
    if labels is not None:
        drop |= labels[:, None] == labels[None, :]
    drop.fill_diagonal_(False)
    logits = logits.float().masked_fill(drop, float("-inf"))
    ce = F.cross_entropy(logits, torch.arange(b, device=logits.device), reduction="none")
    return _mean(ce, query)


def catalogue_info_nce(query: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, tau: float = 0.07,
                       num_negatives: int | None = None, mask: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Positives are catalogue rows table[labels]; query [B, M], table [N, M], labels [B].

    ``num_negatives`` None: full softmax over all N items (= CE over q·Eᵀ/τ). Otherwise S items
    drawn uniformly (shared by the batch) serve as negatives; a draw equal to a row's own label
    is masked out for that row (accidental hit). ``generator`` must live on ``table``'s device.
    """
    labels = labels.long()
    if num_negatives is None:
        return info_nce(query, table, labels, tau, mask)
    if mask is not None:
        query, labels = query[mask.bool()], labels[mask.bool()]
    neg = torch.randint(0, table.shape[0], (num_negatives,), device=table.device, generator=generator)  # [S]
    pos_logit = (query * table[labels]).sum(-1, keepdim=True) / tau  # [B, 1]
    neg_logit = (query @ table[neg].T / tau).float()  # [B, S]
    neg_logit = neg_logit.masked_fill(neg[None, :] == labels[:, None], float("-inf"))
    logits = torch.cat([pos_logit.float(), neg_logit], dim=1)  # positive at column 0
    ce = F.cross_entropy(logits, torch.zeros_like(labels), reduction="none")
    return _mean(ce, query)
