"""Loss-weighting strategies, one file each (each cites its paper).

Every strategy: ``Strategy(task_names, task_weights, **hyperparams)``;
``forward(losses, present) -> (weighted: task -> Tensor, extra: Tensor)``;
``weights() -> task -> float`` (effective multipliers, for logging); ``on_epoch_end(means)``;
``sync_gradients(all_reduce_mean)`` (after backward, before the optimizer step; a no-op where
there is no parameter). GradNorm adds ``gradnorm_step(losses, shared_params, present,
all_reduce_mean)``. Loop contract: docs/model-task-side.md.
"""
from ple_adatt.losses.weighting.dwa import DWAWeighting
from ple_adatt.losses.weighting.fixed import FixedWeighting
from ple_adatt.losses.weighting.gradnorm import GradNormWeighting
from ple_adatt.losses.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNormWeighting,
    "dwa": DWAWeighting,
}

__all__ = ["WEIGHTINGS", "DWAWeighting", "FixedWeighting", "GradNormWeighting", "UncertaintyWeighting"]
