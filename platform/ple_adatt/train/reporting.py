"""Where each per-epoch metric goes, and the console lines of a training run (rank 0).

    say("[ple-adatt] epoch 1/5 | ...")          # printed once (see `say`)
    progress = EpochProgress(epoch, total, rows_per_rank, world)
    progress.update(rows_done)                  # a line at most every PROGRESS_EVERY_S seconds
    ray.train.report(for_report(metrics))       # compact: Tune, checkpoint scoring, FitResult
    logger.log_epoch(for_mlflow(metrics), step=epoch)

The worker's full per-epoch dict (~400 keys with 16 tasks, 130 of them gate weights) stays in the
checkpoint history. Ray logs every reported dict and Tune keeps it per result row, so only the
keys something reads go to `ray.train.report`: the epoch, the train loss (a possible checkpoint
metric), lr, the world size (elastic runs), every validation metric (objectives, checkpoint metrics,
the end-of-run summary) and the loss weights. MLflow gets everything except the step (`epoch`), the training phase (a tag) and
the per-expert gate weights (a table artifact with a few summary metrics: train/diagnostics.py).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

PROGRESS_EVERY_S = 60.0
"""Seconds between two in-epoch progress lines (long epochs only: a short epoch prints none)."""

REPORT_KEYS = ("epoch", "train/loss", "lr", "world_size", "early_stopped")
REPORT_PREFIXES = ("val/", "weight/")
NOT_METRICS = ("epoch", "phase", "adatt/phase")
"""Per-epoch values that are MLflow's step or a tag (`ple_adatt.phase`), never a metric."""
TABLE_PREFIX = "gate/"
"""Per-gate/task/expert diagnostics: logged as a table artifact, only their summaries as metrics."""
GATE_SUMMARIES = ("/entropy_ratio_mean", "/entropy_ratio_min")
"""The gate summaries kept as metrics: `gate/<gate>/entropy_ratio_mean` (train/diagnostics.py)."""


def for_report(metrics: dict) -> dict:
    """The compact dict for `ray.train.report` (see the module docstring)."""
    return {k: v for k, v in metrics.items() if k in REPORT_KEYS or k.startswith(REPORT_PREFIXES)}


def for_mlflow(metrics: dict) -> dict:
    """The metrics MLflow logs per epoch: no step/phase, gate diagnostics only as their summaries."""
    return {k: v for k, v in metrics.items()
            if k not in NOT_METRICS and not (k.startswith(TABLE_PREFIX) and not k.endswith(GATE_SUMMARIES))}


def say(message: str) -> None:
    """Print one console line once. On a Ray Train worker `print` is patched to go through Train's
    logger, which writes it to the console handler and (since the worker's stdout is wrapped)
    echoes it a second time; a write to the process's own stdout reaches the driver once."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochProgress:
    """Throttled in-epoch progress of one rank, scaled to the whole run by the world size:
    `update(rows)` returns (and prints, unless print_fn is None) a line when PROGRESS_EVERY_S have
    passed since the epoch began or the last line, else None."""

    def __init__(self, epoch: int, total_epochs: int, rows_per_rank: int, world: int,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 print_fn: Callable[[str], None] | None = say):
        self.epoch, self.total, self.rows, self.world = epoch, total_epochs, max(1, rows_per_rank), world
        self.every_s, self.clock, self.print_fn = every_s, clock, print_fn
        self.start = self.last = clock()

    def update(self, rows_done: int) -> str | None:
        now = self.clock()
        if now - self.last < self.every_s:
            return None
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = rows_done / elapsed
        eta = (self.rows - rows_done) / rate if rate > 0 else float("inf")
        line = (f"[ple-adatt]   epoch {self.epoch + 1}/{self.total} | {min(rows_done / self.rows, 1.0):4.0%} "
                f"({rows_done * self.world:,}/{self.rows * self.world:,} rows) | {rate * self.world:,.0f} samples/s | "
                f"epoch eta {fmt_duration(eta) if eta != float('inf') else '?'}")
        if self.print_fn is not None:
            self.print_fn(line)
        return line


VERBOSE_ENV = "PLE_ADATT_VERBOSE"
"""Set to 1 by the jobs' --verbose: Ray's and MLflow's INFO lines stay on."""


def quiet_logs() -> None:
    """Ray Data's per-dataset INFO lines ("Dataset ... execution finished") and its "Progress bars
    disabled" warning, Ray Train's per-report INFO line and MLflow's store-setup INFO lines are off
    unless --verbose. Environment
    variables reach the Ray processes this driver starts (a local Ray) and the driver itself;
    train workers call this too (train/loop.py)."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    # Ray processes this driver starts (Ray Data's split coordinator, its tasks) inherit the variable
    # and read it when they configure Ray Data's logging; in this process Ray Data keeps its warnings.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    # Train V2 logs every reported dict ("Reporting training result N: TrainingReport(...)") at INFO
    # from the worker through a logger named after its FILE, so RunConfig(logging_config=WARNING),
    # which filters "ray.train.*", lets it through.
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray version: nothing to quiet
        pass
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
