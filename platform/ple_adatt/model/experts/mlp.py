"""Plain MLP expert: the baseline shared expert and the fallback for datasets without rich groups."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..layers import mlp
from ._io import Batch, FlatInput, any_present, zeros_out


class MLPExpert(nn.Module):
    """Flattened float groups + categorical embeddings -> MLP -> [B, out_dim]."""

    head = ("net",)  # an MLP has no separate feature extractor: all of it is the head (head_parameters)

    def __init__(self, inputs: Mapping[str, Sequence[int]], cat_cardinalities: Mapping[str, Sequence[int]] | None = None,
                 out_dim: int = 64, dropout: float = 0.1, hidden: Sequence[int] = (128,), cat_emb_dim: int = 8):
        super().__init__()
        self.out_dim = out_dim
        self.inp = FlatInput(inputs, cat_cardinalities, cat_emb_dim)
        self.net = mlp(self.inp.dim, hidden, out_dim, dropout)

    def forward(self, batch: Batch) -> Tensor:
        """batch -> [B, out_dim]; zeros when none of the routed groups is in the batch."""
        if not any_present(batch, self.inp.inputs, self.inp.cat.groups if self.inp.cat else {}):
            return zeros_out(batch, self.out_dim)
        return self.net(self.inp(batch))
