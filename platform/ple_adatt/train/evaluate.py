"""Predictions over batches and their cross-rank merge: used by the worker loop's validation and by
launch/inference.py. Validation on N ranks scores every batch exactly once and merges in rank
order, so its metrics equal one rank's over the same split."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ple_adatt.train.step import autocast_context


@torch.no_grad()
def predict_batches(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> dict:
    """Run the model over batches; returns {task: {"logits", "label", "mask"[, "oracle"]}} numpy."""
    model.eval()
    acc: dict[str, dict[str, list]] = {t: {} for t in tasks}
    for i, batch in enumerate(batches):
        if not keep(i):
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast_context(cfg, device) if cfg is not None else torch.autocast(device.type, enabled=False):
            out = model(batch)
        for t in tasks:
            parts = {"logits": out[t].float(), "label": batch[f"label/{t}"], "mask": batch[f"mask/{t}"]}
            if f"oracle/{t}" in batch:
                parts["oracle"] = batch[f"oracle/{t}"]
            for k, v in parts.items():
                acc[t].setdefault(k, []).append(v.detach().cpu().numpy())
    return {t: {k: np.concatenate(v) for k, v in d.items()} for t, d in acc.items() if d}


def merge_predictions(parts: list[dict]) -> dict:
    """Concatenate per-rank prediction dicts in rank order (deterministic)."""
    tasks = {t for p in parts for t in p}
    return {t: {k: np.concatenate([p[t][k] for p in parts if t in p]) for k in next(p[t] for p in parts if t in p)}
            for t in tasks}


def predict_distributed(raw_model, batches, tasks: list[str], device, rank: int, world: int, cfg=None) -> dict:
    """Rank r scores batches i with i % world == r; the predictions are gathered on rank 0 (others: {}).

    Runs the unwrapped module: DDP's forward broadcasts buffers (a collective), and ranks score
    different numbers of validation batches."""
    preds = predict_batches(raw_model, batches, tasks, device, keep=lambda i: i % world == rank, cfg=cfg)
    if world == 1:
        return preds
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(preds, gathered, dst=0)
    return merge_predictions(gathered) if rank == 0 else {}
