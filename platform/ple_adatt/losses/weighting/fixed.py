"""Fixed task weights: L = Σ_k w_k L_k (the plain weighted sum of Caruana, "Multitask
Learning", Machine Learning 28, 1997; no learned state)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ple_adatt.losses.weighting._common import fixed_weights, present_tasks


class FixedWeighting(nn.Module):
    """weighted_k = w_k · L_k for present tasks; extra = 0. Stateless, hence DDP-safe."""

    def __init__(self, task_names: Sequence[str], task_weights: Mapping[str, float]):
        super().__init__()
        self.task_names = list(task_names)
        self.register_buffer("w", fixed_weights(self.task_names, task_weights), persistent=False)

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, bool] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """losses: task -> scalar unweighted loss. Returns (task -> w_k L_k, 0-dim zero)."""
        idx = {t: i for i, t in enumerate(self.task_names)}
        weighted = {t: self.w[idx[t]] * losses[t] for t in present_tasks(self.task_names, losses, present)}
        return weighted, self.w.new_zeros(())

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.w.tolist()))

    def before_backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor],
                        present: Mapping[str, bool] | None = None,
                        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """No per-step state. Returns a 0-dim zero."""
        return self.w.new_zeros(())

    def on_epoch_end(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """No epoch state."""

    def sync_gradients(self, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """No parameters."""
