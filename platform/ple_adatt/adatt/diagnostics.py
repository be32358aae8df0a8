"""adaTT diagnostics: transfer-weight entropy, blocked pairs, negative transfer, heatmaps.

Matrices are [T, T] with row = target task, column = source task.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def transfer_entropy(weights: Tensor, allowed: Tensor) -> Tensor:
    """Mean normalised row entropy H(w_i) / log(#allowed_i) over rows with >= 2 allowed sources.

    1.0 means uniform transfer (adaTT degenerates to a loss rescale, spec §11.5); 0 means one
    source per row. Returns a 0-d tensor (NaN when no row has two sources).
    """
    k = allowed.sum(dim=1)                                               # [T]
    rows = k >= 2
    if not bool(rows.any()):
        return torch.tensor(float("nan"))
    w = weights.detach()[rows]
    h = -(w * torch.log(w.clamp_min(1e-30))).sum(dim=1)
    return (h / torch.log(k[rows].to(w.dtype))).mean()


def blocked_fraction(affinity: Tensor, present: Tensor, neg_threshold: float) -> Tensor:
    """Fraction of off-diagonal pairs of present tasks blocked as negative (A <= tau_neg)."""
    t = affinity.shape[0]
    pairs = present[:, None] & present[None, :] & ~torch.eye(t, dtype=torch.bool, device=affinity.device)
    if not bool(pairs.any()):
        return torch.tensor(0.0)
    return ((affinity <= neg_threshold) & pairs).sum() / pairs.sum()


def negative_transfer_pairs(affinity: Tensor, task_names: Sequence[str],
                            neg_threshold: float = -0.1) -> list[tuple[str, str, float]]:
    """Off-diagonal (target, source, A_ij) with A_ij <= tau_neg, most negative first.

    These are exactly the pairs the transfer weights block."""
    a = affinity.detach().cpu()
    out = [(task_names[i], task_names[j], float(a[i, j]))
           for i in range(a.shape[0]) for j in range(a.shape[1])
           if i != j and a[i, j] <= neg_threshold]
    return sorted(out, key=lambda x: x[2])


def save_heatmap(matrix: Tensor, task_names: Sequence[str], path: str | Path, title: str = "",
                 vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write a T x T heatmap PNG (matplotlib Agg, no display needed). Returns the path."""
    # Figure + Agg canvas, no pyplot: no global backend state on headless workers, no leaks.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = matrix.detach().float().cpu().numpy()
    t = len(task_names)
    if m.shape != (t, t):
        raise ValueError(f"heatmap matrix has shape {m.shape}, expected ({t}, {t}) for tasks {list(task_names)}")
    size = max(4.0, 0.45 * t + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu_r" if (vmin is not None and vmin < 0) else "viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(t), task_names, rotation=90, fontsize=8)
    ax.set_yticks(range(t), task_names, fontsize=8)
    ax.set_xlabel("source task j")
    ax.set_ylabel("target task i")
    ax.set_title(title)
    if t <= 20:  # values stay legible up to ~20 tasks
        for i in range(t):
            for j in range(t):
                if math.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
