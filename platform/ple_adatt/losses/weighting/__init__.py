"""Loss-weighting strategies, one file each (each cites its paper).

Every strategy: ``Strategy(task_names, task_weights, **hyperparams)``;
``forward(losses, present) -> (weighted: task -> Tensor, extra: Tensor)``;
``weights() -> task -> float`` (effective multipliers, for logging); ``on_epoch_end(means)``;
``before_backward(losses, shared_params, present, all_reduce_mean)`` (every step, before the
forward weighting and the backward; GradNorm moves λ here, a no-op for the others);
``sync_gradients(all_reduce_mean)`` (after backward, before the optimizer step; a no-op where
there is no parameter). The loop calls every hook on every strategy and never names one
(train/step.py). Loop contract: docs/model-task-side.md.
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
