"""Per-task losses on logits, computed in fp32 over the rows whose label is present.

Every loss has the signature `loss(logits, target, mask, **params) -> scalar` and returns the
mean over masked-in rows (0 with no gradient-breaking NaN when no row has a label).
Shapes: binary/regression logits [B], multiclass/contrastive logits [B, C]; mask [B] bool.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(per_row.dtype)
    return (per_row * m).sum() / m.sum().clamp_min(1.0)


def bce(logits, target, mask, pos_weight: float | None = None, **_):
    """Binary cross-entropy on logits; ``pos_weight`` scales the positive rows' term (rare tasks)."""
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none", pos_weight=pw)
    return _masked_mean(per, mask)


def focal(logits, target, mask, focal_alpha: float = 0.25, focal_gamma: float = 2.0, **_):
    """Focal loss (Lin et al., ICCV 2017) on logits.

    Binary: alpha weights positives, (1 - alpha) negatives; gamma = 0 gives alpha-weighted BCE.
    Multiclass ([B, C] logits): alpha * (1 - p_y)^gamma * CE.
    """
    logits = logits.float()
    if logits.dim() == 1:
        y = target.float()
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p_t = torch.exp(-ce)  # prob of the true class, computed stably
        alpha_t = focal_alpha * y + (1 - focal_alpha) * (1 - y)
        return _masked_mean(alpha_t * (1 - p_t) ** focal_gamma * ce, mask)
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    p_t = torch.exp(-ce)
    return _masked_mean(focal_alpha * (1 - p_t) ** focal_gamma * ce, mask)


def ce(logits, target, mask, **_):
    return _masked_mean(F.cross_entropy(logits.float(), target.long(), reduction="none"), mask)


def huber(logits, target, mask, huber_delta: float = 1.0, **_):
    return _masked_mean(F.huber_loss(logits.float(), target.float(), reduction="none", delta=huber_delta), mask)


def mse(logits, target, mask, **_):
    return _masked_mean(F.mse_loss(logits.float(), target.float(), reduction="none"), mask)


def infonce(logits, target, mask, **_):
    """InfoNCE (van den Oord et al., 2018) over catalogue similarities: `logits` [B, C] are the
    temperature-scaled similarities q.E^T / tau from a contrastive tower and the positive is the
    labelled item, so InfoNCE is exactly CE over them."""
    return ce(logits, target, mask)


TASK_LOSSES = {
    "focal": focal,
    "bce": bce,
    "ce": ce,
    "huber": huber,
    "mse": mse,
    "infonce": infonce,
}
