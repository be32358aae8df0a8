"""Optional sidecars of any multi-task model (spec §6.7, §6.8): the sparse autoencoder on the shared
representation and one evidential head per task, parallel to its tower. Both are off by default
(``model.sae`` / ``model.evidential``); a model without them has no ``sidecars`` parameters, so its
state dict and parameter count are unchanged.

Notation: B batch, D_t width of task t's tower input, D shared width, L SAE latents, C classes.

Data flow inside the model's forward (model/baselines.py MultiTaskModel, model/assembly.py HeteroPLE)::

    h = {task: tower input [B, D_t]};  s = model.shared_representation()  # [B, D]
    sidecars(h, s)        # stores the evidential outputs and the SAE loss of this batch
    logits = towers(h)    # predictions still come from the towers

The training step reads ``sidecars.evidential_loss(...)`` and ``sidecars.sae_loss``; prediction
reads ``sidecars.last`` (per-row uncertainty). Evaluation switches on ``track_sae`` to count how
often each latent fires (sparsity, dead-feature rate).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ple_adatt.model.evidential import DirichletHead, NIGHead, dirichlet_loss, nig_loss
from ple_adatt.model.sae import SparseAutoencoder

EVIDENTIAL_TYPES = ("binary", "multiclass", "regression")
"""Task types an evidential head exists for: Beta/Dirichlet (classification), NIG (regression)."""


class Sidecars(nn.Module):
    """Evidential heads (task -> DirichletHead | NIGHead) and/or a SparseAutoencoder.

    Args:
        task_types: task -> type, for the tasks that get an evidential head (may be empty).
        task_dims: task -> D_t, the tower-input width of those tasks.
        num_classes: task -> C for multiclass tasks (binary uses C = 2, Beta as a 2-class Dirichlet).
        shared_dim: D of the shared representation, or None for no SAE.
        sae_expansion, sae_l1: SAE dictionary size L = expansion·D and its L1 sparsity coefficient.
    """

    def __init__(self, task_types: Mapping[str, str], task_dims: Mapping[str, int], num_classes: Mapping[str, int],
                 shared_dim: int | None = None, sae_expansion: int = 4, sae_l1: float = 1e-3):
        super().__init__()
        heads = {}
        for t, ttype in task_types.items():
            if ttype not in EVIDENTIAL_TYPES:
                raise ValueError(f"no evidential head for task {t!r} of type {ttype!r}; valid: {list(EVIDENTIAL_TYPES)}")
            heads[t] = NIGHead(task_dims[t]) if ttype == "regression" else \
                DirichletHead(task_dims[t], 2 if ttype == "binary" else num_classes[t])
        self.task_types = dict(task_types)
        self.heads = nn.ModuleDict(heads)
        self.sae = SparseAutoencoder(shared_dim, sae_expansion, sae_l1) if shared_dim else None
        self.last: dict[str, dict[str, Tensor]] = {}
        self.sae_loss: Tensor | None = None
        self.track_sae = False
        self.reset_sae_stats()

    def forward(self, task_inputs: Mapping[str, Tensor], shared: Tensor | None) -> None:
        """task_inputs {task: [B, D_t]}, shared [B, D] (None only without an SAE)."""
        self.last = {t: head(task_inputs[t]) for t, head in self.heads.items()}
        self.sae_loss = None
        if self.sae is not None:
            if shared is None:
                raise ValueError("the SAE needs the model's shared representation; this forward produced none")
            z, _, self.sae_loss = self.sae(shared)
            if self.track_sae:
                with torch.no_grad():
                    fired = (z > 0).double()                       # [B, L]
                    self._fired += fired.sum(0).cpu()
                    self._rows += z.shape[0]

    # ---- training ------------------------------------------------------------------------------
    def evidential_loss(self, batch: Mapping[str, Tensor], epoch: int, *, kl_weight: float, anneal_epochs: int,
                        nig_reg: float) -> dict[str, Tensor]:
        """{task: masked evidential loss} of the last forward, labels and masks from ``batch``.
        A task without labels on this batch gives 0 with its head still in the graph (DDP)."""
        out = {}
        for t, o in self.last.items():
            y, m = batch[f"label/{t}"], batch[f"mask/{t}"]
            if self.task_types[t] == "regression":
                out[t] = nig_loss(o, y, reg=nig_reg, mask=m)
            else:
                out[t] = dirichlet_loss(o["alpha"], y.long(), epoch, anneal_epochs, kl_weight, mask=m)
        return out

    # ---- evaluation ----------------------------------------------------------------------------
    def reset_sae_stats(self) -> None:
        n = self.sae.weight.shape[0] if self.sae is not None else 0
        self._fired, self._rows = torch.zeros(n, dtype=torch.float64), 0

    def sae_stats(self) -> dict[str, float]:
        """Over the rows seen while ``track_sae`` was on: ``sae/l0_fraction`` (mean share of latents
        active per row: the sparsity), ``sae/dead_fraction`` (latents that never fired) and
        ``sae/latents`` (L). Empty without an SAE or rows."""
        if self.sae is None or self._rows == 0:
            return {}
        freq = self._fired / self._rows                              # [L] firing frequency
        return {"sae/l0_fraction": float(freq.mean()), "sae/dead_fraction": float((freq == 0).double().mean()),
                "sae/latents": float(freq.numel())}

    def uncertainty_arrays(self, task: str) -> dict[str, Tensor]:
        """The last forward's per-row outputs of ``task``'s head: ``u`` [B] (u = C/S for classification,
        β/(v(α−1)) for regression), ``evi_prob`` [B, C] or the NIG parameters ``evi_mu/v/alpha/beta``."""
        o = self.last.get(task)
        if o is None:
            return {}
        if "prob" in o:
            return {"u": o["uncertainty"], "evi_prob": o["prob"]}
        return {"u": o["uncertainty"], **{f"evi_{k}": o[k] for k in ("mu", "v", "alpha", "beta")}}

    def dictionary(self) -> dict[str, Tensor]:
        """The SAE's feature dictionary: unit-norm decoder directions ``decoder`` [L, D], ``b_enc`` [L],
        ``b_pre`` [D]."""
        if self.sae is None:
            return {}
        return {"decoder": nn.functional.normalize(self.sae.weight.detach(), dim=1).cpu(),
                "b_enc": self.sae.b_enc.detach().cpu(), "b_pre": self.sae.b_pre.detach().cpu()}


def sidecars_of(model: nn.Module) -> Sidecars | None:
    """The model's sidecars (None when it has none); unwraps DDP's ``.module``."""
    model = getattr(model, "module", model)
    return getattr(model, "sidecars", None)
