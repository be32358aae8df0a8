"""Training phase 2 helper: freeze the shared experts + CGC (spec §8.1).

How the loop switches (one Ray Train run, both phases):

1. ``freeze_parameters(model.named_parameters(), is_shared)`` on the *unwrapped* module;
   ``adatt.disable()``; put frozen modules with running statistics (BatchNorm) in ``eval()``.
2. Re-wrap the unwrapped module for DDP (``ray.train.torch.prepare_model`` again, or a new
   ``DistributedDataParallel``): DDP's reducer fixed its parameter set at construction and would
   wait forever for gradients of the now frozen parameters.
3. Build a fresh optimizer over ``trainable_parameters(module)`` only, a fresh scheduler (linear
   warmup 2 epochs then cosine, no restarts), a fresh GradScaler; reset early stopping.
4. Record the training phase in every checkpoint; on resume in phase 2 repeat 1–3 *before*
   loading the optimizer/scheduler state saved in phase 2.

The platform's worker loop does this (and the CGC freeze at adaTT's frozen phase) through one
mechanism, ``ple_adatt.train.trainable``; these helpers serve a hand-written loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import nn


def prefix_predicate(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Predicate true for parameter names under any of the module ``prefixes`` (e.g. "shared_experts")."""
    dotted = tuple(p.rstrip(".") + "." for p in prefixes)
    return lambda name: name.startswith(dotted)


def freeze_parameters(named_parameters: Iterable[tuple[str, nn.Parameter]],
                      is_shared: Callable[[str], bool]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name satisfies ``is_shared``.

    Returns the frozen names (sorted). Raises when nothing matches: a typo in the prefixes would
    otherwise silently fine-tune the shared experts in phase 2.
    """
    named = list(named_parameters)
    frozen = sorted(name for name, p in named if is_shared(name))
    if not frozen:
        sample = [name for name, _ in named[:8]]
        raise ValueError(f"phase-2 freeze matched no parameter; first names are {sample}")
    for name, p in named:
        if is_shared(name):
            p.requires_grad_(False)
    return frozen


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that still require grad: what the phase-2 optimizer is built over."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameter left for phase 2")
    return params
