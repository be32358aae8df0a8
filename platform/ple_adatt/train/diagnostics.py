"""Gate and adaTT diagnostics of a training run: per-epoch values, a CSV table and figures (rank 0 only).

Figures use matplotlib's Figure + Agg canvas, imported lazily, never pyplot (no global backend
state on workers); model/ holds no plotting code.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def plot_gate_heatmap(weights: Tensor, task_labels: Sequence[str], expert_labels: Sequence[str], path: str | Path,
                      title: str = "CGC gate weights") -> Path:
    """Write a tasks x experts heatmap PNG (matplotlib, Agg) of `weights` [T, E]; returns the path."""
    # Figure + Agg canvas, no pyplot: no global backend state on headless workers (as adatt/diagnostics.py).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = torch.as_tensor(weights).detach().float().cpu().numpy()
    if w.shape != (len(task_labels), len(expert_labels)):
        raise ValueError(f"weights {list(w.shape)} do not match {len(task_labels)} tasks x {len(expert_labels)} experts")
    fig = Figure(figsize=(1.0 + 0.8 * w.shape[1], 1.0 + 0.4 * w.shape[0]))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(w.max()), 1e-6))
    ax.set_xticks(range(w.shape[1]), expert_labels, rotation=45, ha="right")
    ax.set_yticks(range(w.shape[0]), task_labels)
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if w[i, j] < 0.6 * w.max() else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def log_gate_diagnostics(raw_model, metrics: dict, logger, last_epoch: bool, rank: int) -> None:
    """Per-task gate entropy ratios and weights as metrics; a tasks x experts heatmap at the end."""
    if rank != 0 or not hasattr(raw_model, "gate_diagnostics"):
        return
    diag = raw_model.gate_diagnostics()
    for gate, w in diag["weights"].items():
        labels = diag["labels"][gate]
        for i, t in enumerate(diag["tasks"]):
            for j, e in enumerate(labels):
                metrics[f"gate/{gate}/{t}/{e}"] = float(w[i, j])
    for gate, ratios in diag["entropy"].items():
        for i, t in enumerate(diag["tasks"]):
            metrics[f"gate/{gate}/{t}/entropy_ratio"] = float(ratios[i])
    # The few gate numbers MLflow keeps as metrics (train/reporting.for_mlflow); the rest is a table.
    for gate, ratios in diag["entropy"].items():
        r = [float(x) for x in ratios]
        metrics[f"gate/{gate}/entropy_ratio_mean"] = sum(r) / max(1, len(r))
        metrics[f"gate/{gate}/entropy_ratio_min"] = min(r) if r else float("nan")
    if last_epoch and diag["weights"]:
        with tempfile.TemporaryDirectory() as d:
            for gate, w in diag["weights"].items():
                path = plot_gate_heatmap(w, diag["tasks"], diag["labels"][gate], Path(d) / f"gate_{gate}.png",
                                         title=f"CGC gate weights ({gate})")
                logger.log_artifact(path, "diagnostics")


def log_adatt_diagnostics(adatt, epoch: int, metrics: dict, logger, rank: int) -> None:
    if adatt is None or rank != 0:
        return
    metrics["adatt/phase"] = int(adatt.phase)
    metrics["adatt/blend_ratio"] = float(adatt.blend_ratio)
    neg = adatt.negative_transfer()
    metrics["adatt/negative_pairs"] = len(neg)
    with tempfile.TemporaryDirectory() as d:
        for path in adatt.save_heatmaps(d, epoch):
            logger.log_artifact(path, "diagnostics/adatt")
        snap = Path(d) / f"adatt_e{epoch:03d}.json"
        snap.write_text(json.dumps({"tasks": adatt.task_names, "affinity": adatt.affinity.tolist(),
                                    "transfer_weights": adatt.transfer_weights()[0].tolist(),
                                    "negative_pairs": [list(p) for p in neg], "phase": adatt.phase.name}))
        logger.log_artifact(snap, "diagnostics/adatt")
        final = Path(d) / "affinity_final.json"  # overwritten each epoch: the last one is the final epoch's
        final.write_text(json.dumps({"tasks": adatt.task_names, "matrix": adatt.affinity.tolist(), "epoch": epoch}))
        logger.log_artifact(final, "adatt")


def log_sae_dictionary(raw_model, logger, last_epoch: bool, rank: int) -> Path | None:
    """At the end of fit (rank 0), the SAE's feature dictionary as MLflow artifact sae/dictionary.npz:
    ``decoder`` [L, D] unit-norm feature directions, ``b_enc`` [L], ``b_pre`` [D]. Returns the file's
    name under a temporary folder (gone after logging), or None when there is nothing to log."""
    from ple_adatt.model.sidecars import sidecars_of

    side = sidecars_of(raw_model)
    if rank != 0 or not last_epoch or side is None or side.sae is None:
        return None
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dictionary.npz"
        np.savez(path, **{k: v.numpy() for k, v in side.dictionary().items()})
        logger.log_artifact(path, "sae")
    return path


def diagnostics_table(history: list[dict]) -> list[dict]:
    """Long table of every gate and adaTT value of every epoch so far, from the run's history
    (so a resumed run's table is complete): rows {epoch, key, gate, task, expert, value} with
    key "gate_weight" / "entropy_ratio" (per gate, task[, expert]) or an adaTT name ("adatt/phase", ...)."""
    rows = []
    for h in history:
        for k, v in h.items():
            parts = k.split("/")
            if parts[0] == "gate" and len(parts) == 4 and parts[3] == "entropy_ratio":
                rows.append({"epoch": h["epoch"], "key": "entropy_ratio", "gate": parts[1], "task": parts[2],
                             "expert": "", "value": v})
            elif parts[0] == "gate" and len(parts) == 4:
                rows.append({"epoch": h["epoch"], "key": "gate_weight", "gate": parts[1], "task": parts[2],
                             "expert": parts[3], "value": v})
            elif parts[0] == "adatt":
                rows.append({"epoch": h["epoch"], "key": k, "gate": "", "task": "", "expert": "", "value": v})
    return rows


def log_diagnostics_table(history: list[dict], logger, rank: int) -> None:
    """Rewrite diagnostics/gates_adatt.csv (the table of `diagnostics_table`) in the run; rank 0 only."""
    if rank != 0:
        return
    rows = diagnostics_table(history)
    if not rows:
        return
    import csv

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gates_adatt.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        logger.log_artifact(path, "diagnostics")
