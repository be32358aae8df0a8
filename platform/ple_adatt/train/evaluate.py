"""Predictions over batches and their cross-rank merge: used by the worker loop's validation and by
launch/inference.py. Validation on N ranks scores every batch exactly once and merges the batches
back in their original order, so its metrics equal one rank's over the same split, bit for bit."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ple_adatt.model.sidecars import sidecars_of
from ple_adatt.train.step import autocast_context


@torch.no_grad()
def predict_parts(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> list[tuple[int, dict]]:
    """[(batch index, {task: {"logits", "label", "mask"[, "oracle"][, evidential "u", ...]}})] numpy,
    for the batches kept (the evidential keys: model/sidecars.py Sidecars.uncertainty_arrays)."""
    model.eval()
    side = sidecars_of(model)
    parts = []
    for i, batch in enumerate(batches):
        if not keep(i):
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast_context(cfg, device) if cfg is not None else torch.autocast(device.type, enabled=False):
            out = model(batch)
        one = {}
        for t in tasks:
            arrays = {"logits": out[t].float(), "label": batch[f"label/{t}"], "mask": batch[f"mask/{t}"]}
            if f"oracle/{t}" in batch:
                arrays["oracle"] = batch[f"oracle/{t}"]
            if side is not None:
                arrays |= side.uncertainty_arrays(t)
            one[t] = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
        parts.append((i, one))
    return parts


def concat_parts(parts: list[tuple[int, dict]]) -> dict:
    """Batches in index order -> {task: {key: array over all rows}}."""
    parts = sorted(parts, key=lambda p: p[0])
    if not parts:
        return {}
    return {t: {k: np.concatenate([p[t][k] for _, p in parts]) for k in parts[0][1][t]} for t in parts[0][1]}


def predict_batches(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> dict:
    """Run the model over batches; returns {task: {"logits", "label", "mask"[, "oracle"]}} numpy."""
    return concat_parts(predict_parts(model, batches, tasks, device, keep, cfg))


def predict_distributed(raw_model, batches, tasks: list[str], device, rank: int, world: int, cfg=None) -> dict:
    """Rank r scores batches i with i % world == r; rank 0 gathers them and restores the batch order
    (others return {}), so the float sums behind every metric add up as on one rank.

    Runs the unwrapped module: DDP's forward broadcasts buffers (a collective), and ranks score
    different numbers of validation batches."""
    parts = predict_parts(raw_model, batches, tasks, device, keep=lambda i: i % world == rank, cfg=cfg)
    if world == 1:
        return concat_parts(parts)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(parts, gathered, dst=0)
    return concat_parts([p for rank_parts in gathered for p in rank_parts]) if rank == 0 else {}
