"""The one mechanism for every change of the trainable parameter set (issue 14).

Which parameters are frozen is a pure function of the training state, never of history:

    frozen_parameter_names(raw_model, phase, adatt_phase)
      phase 2 (two-phase training, spec §8.1): the shared experts and the CGC gates
                (``raw_model.phase2_frozen_prefixes()``);
      phase 1, adaTT FROZEN (spec §7.7): the CGC attention gate (``adatt_frozen_prefixes()``).

``TrainableSet.update`` applies it to the UNWRAPPED module and re-wraps it (DDP under Ray via
``ray.train.torch.prepare_model``, torch DDP in the gloo harness) whenever the set changes, so
``requires_grad`` never changes under a live DDP wrapper: DDP's reducer fixes its parameter set
at construction and would wait for gradients that never come ("Expected to have finished
reduction in the prior iteration"). Every rank computes the same set from the same state and
re-wraps at the same epoch boundary. On resume the same function of the checkpointed state
gives the same set.

Optimizer (a documented choice, exact and resume-safe): its parameter list is a function of
the TRAINING phase only (``frozen_parameter_names(raw_model, phase, None)``), built once per
phase. A freeze inside phase 1 (the CGC gate at adaTT's FROZEN phase) only stops gradients:
AdamW skips parameters without a gradient, so the moments of every parameter that stays
trainable are kept untouched, the frozen gate's moments are kept unused, and a resume rebuilds
the same param groups before loading the saved state. Phase 2 gets a fresh optimizer over the
parameters it trains (spec §8.1).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ple_adatt.adatt import AdaTT, Phase
from ple_adatt.adatt.two_phase import prefix_predicate
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.train.build import make_optimizer
from ple_adatt.train.step import Trainer


def frozen_parameter_names(raw_model: nn.Module, phase: int, adatt_phase: Phase | None) -> frozenset[str]:
    """Names of the parameters frozen in training ``phase`` (1 or 2) at ``adatt_phase`` (None: adaTT
    off or not considered, as for the optimizer). Raises when a phase-2 freeze matches nothing: a
    wrong prefix would otherwise silently fine-tune the shared experts."""
    names = [n for n, _ in raw_model.named_parameters()]
    frozen: set[str] = set()
    if phase == 2:
        is_shared = prefix_predicate(raw_model.phase2_frozen_prefixes())
        frozen |= {n for n in names if is_shared(n)}
        if not frozen:
            raise ValueError(f"phase-2 freeze matched no parameter; first names are {names[:8]}")
    if phase == 1 and adatt_phase is Phase.FROZEN and hasattr(raw_model, "adatt_frozen_prefixes"):
        in_gate = prefix_predicate(raw_model.adatt_frozen_prefixes())
        frozen |= {n for n in names if in_gate(n)}
    return frozenset(frozen)


def phase_optimizer(cfg: ExperimentConfig, raw_model: torch.nn.Module, weighting: torch.nn.Module,
                    adatt: AdaTT | None, phase: int, steps_per_epoch: int):
    """The optimizer and schedule of training ``phase``: phase 1 trains everything (+ the weighting's
    and adaTT's parameters) over train.epochs; phase 2 the parameters it leaves trainable, with
    two_phase.phase2_lr over two_phase.phase2_epochs (spec §8.1). A function of the phase only,
    so a resume rebuilds the same param groups before loading their state."""
    frozen = frozen_parameter_names(raw_model, phase, None)
    if phase == 1:
        extras = [m for m in (weighting, adatt) if m is not None]
        return make_optimizer(cfg, raw_model, extras, cfg.train.lr, steps_per_epoch * cfg.train.epochs, frozen)
    return make_optimizer(cfg, raw_model, [weighting], cfg.two_phase.phase2_lr or cfg.train.lr,
                          steps_per_epoch * cfg.two_phase.phase2_epochs, frozen)


class TrainableSet:
    """Owns the DDP wrapper of ``raw_model``: ``model`` is valid after the first ``update``.

    wrap: unwrapped module -> the module the forward runs through (``prepare_model``, ``DDP``,
    or identity on one process); called on every rank at the same point."""

    def __init__(self, raw_model: nn.Module, wrap: Callable[[nn.Module], nn.Module]):
        self.raw_model, self.wrap = raw_model, wrap
        self.frozen: frozenset[str] | None = None
        self.model: nn.Module | None = None

    def update(self, phase: int, adatt_phase: Phase | None) -> bool:
        """Recompute the frozen set; if it changed, drop the wrapper, apply it on the unwrapped module
        and wrap again. Returns whether it changed (the first call always does)."""
        frozen = frozen_parameter_names(self.raw_model, phase, adatt_phase)
        if frozen == self.frozen:
            return False
        self.model = None  # the old wrapper is never used again
        if phase == 1 and adatt_phase is Phase.FROZEN and hasattr(self.raw_model, "shared"):
            self.raw_model.shared.freeze_gate()  # the gate's checkpointed flag (stops its entropy term)
        for name, p in self.raw_model.named_parameters():
            p.requires_grad_(name not in frozen)
        self.frozen = frozen
        self.model = self.wrap(self.raw_model)
        return True


def begin_epoch(trainer: Trainer, trainable: TrainableSet, epoch: int, phase: int, steps_per_epoch: int) -> tuple[int, bool]:
    """The state change at the start of ``epoch`` (0-based over both phases), identical on every
    rank: the switch to training phase 2 (adaTT off, fresh phase-2 optimizer, spec §8.1), adaTT's
    schedule, and the trainable set (re-wrapping when it changed; ``trainer.model`` follows).
    Returns (training phase, whether the trainable set changed). Used by the worker loop and the
    gloo harness (tests/ddp_harness.py)."""
    cfg, adatt = trainer.cfg, trainer.adatt
    trainer.epoch = epoch
    if epoch >= cfg.train.epochs and phase == 1:  # two-phase training: switch once
        phase = 2
        if adatt is not None:
            adatt.disable()
        trainer.optimizer, trainer.scheduler = phase_optimizer(cfg, trainer.raw_model, trainer.weighting, adatt, 2,
                                                               steps_per_epoch)
    adatt_phase = adatt.on_epoch_start(epoch, cfg.train.epochs) if adatt is not None and phase == 1 else None
    changed = trainable.update(phase, adatt_phase)
    if changed:
        trainer.model = trainable.model
    return phase, changed
