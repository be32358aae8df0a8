"""Three-phase adaTT schedule and prior-blend annealing (spec §7.4–§7.5, §11.10).

Epochs are 0-based indices of the epoch about to run, counted within training phase 1
(the phase in which adaTT is active).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Phase(enum.IntEnum):
    WARMUP = 0   # affinity measured, losses unchanged
    DYNAMIC = 1  # affinity measured, transfer applied, W trainable, r annealed
    FROZEN = 2   # measurement stops, transfer applied with detached weights
    OFF = 3      # training phase 2: adaTT disabled (shared experts frozen)


@dataclass(frozen=True)
class AdaTTSchedule:
    """warmup: e < warmup_epochs; dynamic: warmup_epochs <= e < freeze_epoch; frozen: after."""

    warmup_epochs: int
    freeze_epoch: int
    r_start: float = 0.5
    r_end: float = 0.1

    def __post_init__(self):
        if self.warmup_epochs < 0:
            raise ValueError(f"adatt warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.freeze_epoch <= self.warmup_epochs:  # the H-6 check: the dynamic phase must exist
            raise ValueError(
                f"adatt freeze_epoch ({self.freeze_epoch}) must be > warmup_epochs ({self.warmup_epochs})")
        for key in ("r_start", "r_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"adatt {key} must be in [0, 1], got {getattr(self, key)}")

    @classmethod
    def from_fractions(cls, total_epochs: int, warmup_fraction: float = 0.3,
                       freeze_fraction: float = 0.8, **blend) -> AdaTTSchedule:
        """Boundaries as fractions of the run's (phase-1) epochs, so short runs keep all three
        phases: each phase gets >= 1 epoch, which needs total_epochs >= 3.
        Defaults 0.3 / 0.8 are the G2 ablation setting (3 / 8 of 10 epochs)."""
        if not 0.0 <= warmup_fraction < freeze_fraction <= 1.0:
            raise ValueError(f"adatt fractions need 0 <= warmup_fraction < freeze_fraction <= 1, "
                             f"got {warmup_fraction} / {freeze_fraction}")
        if total_epochs < 3:
            raise ValueError(f"adatt needs >= 3 epochs to keep warmup, dynamic and frozen phases, got "
                             f"{total_epochs}; set warmup_epochs / freeze_epoch explicitly instead")
        warmup = min(max(math.floor(warmup_fraction * total_epochs + 0.5), 1), total_epochs - 2)
        freeze = min(max(math.floor(freeze_fraction * total_epochs + 0.5), warmup + 1), total_epochs - 1)
        return cls(warmup, freeze, **blend)

    def phase(self, epoch: int) -> Phase:
        if epoch < self.warmup_epochs:
            return Phase.WARMUP
        return Phase.DYNAMIC if epoch < self.freeze_epoch else Phase.FROZEN

    def blend_ratio(self, epoch: int) -> float:
        """r(e) = r_start - (r_start - r_end) * clip((e - warmup) / (freeze - warmup), 0, 1)."""
        span = self.freeze_epoch - self.warmup_epochs
        progress = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        return self.r_start - (self.r_start - self.r_end) * progress


def resolve_schedule(total_epochs: int, warmup_epochs: int | None = None, freeze_epoch: int | None = None,
                     warmup_fraction: float = 0.3, freeze_fraction: float = 0.8,
                     r_start: float = 0.5, r_end: float = 0.1) -> AdaTTSchedule:
    """Explicit epochs when both are given, else fractions of ``total_epochs`` (phase-1 epochs).

    Call it in the driver's config validation too: it raises the same errors the workers would.
    """
    if (warmup_epochs is None) != (freeze_epoch is None):
        raise ValueError("adatt warmup_epochs and freeze_epoch must be given together (or neither, to use fractions)")
    if warmup_epochs is None:
        return AdaTTSchedule.from_fractions(total_epochs, warmup_fraction, freeze_fraction,
                                            r_start=r_start, r_end=r_end)
    schedule = AdaTTSchedule(warmup_epochs, freeze_epoch, r_start, r_end)
    if freeze_epoch >= total_epochs:
        raise ValueError(f"adatt freeze_epoch ({freeze_epoch}) must be < the {total_epochs} phase-1 epochs, "
                         f"or the frozen phase never runs")
    return schedule
