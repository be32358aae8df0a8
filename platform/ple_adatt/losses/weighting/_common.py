"""Helpers shared by the weighting strategies: validation and the present-task set."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def fixed_weights(task_names: Sequence[str], task_weights: Mapping[str, float]) -> torch.Tensor:
    """Fixed weights w_k [T] in ``task_names`` order; tasks missing from ``task_weights`` get 1.0."""
    if len(set(task_names)) != len(task_names) or not task_names:
        raise ValueError(f"task_names must be non-empty and unique, got {list(task_names)}")
    unknown = sorted(set(task_weights) - set(task_names))
    if unknown:
        raise ValueError(f"task_weights names unknown tasks {unknown}; tasks: {list(task_names)}")
    bad = {k: v for k, v in task_weights.items() if not v >= 0}
    if bad:
        raise ValueError(f"task_weights must be >= 0, got {bad}")
    return torch.tensor([float(task_weights.get(t, 1.0)) for t in task_names])


def present_tasks(
    task_names: Sequence[str], losses: Mapping[str, torch.Tensor], present: Mapping[str, bool] | None
) -> list[str]:
    """Tasks with a loss in this batch, in ``task_names`` order: in ``losses`` and not flagged absent."""
    unknown = sorted(set(losses) - set(task_names))
    if unknown:
        raise KeyError(f"losses for unknown tasks {unknown}; tasks: {list(task_names)}")
    present = present or {}
    return [t for t in task_names if t in losses and bool(present.get(t, True))]
