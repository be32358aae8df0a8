"""The seed's PLE, assembled from its blocks (spec §3–§5):

    batch -> SharedExtractor (router -> heterogeneous experts -> CGC gate)     {task: [B, D_t]}
          -> GroupTaskExpertBasket (task repr || HMM mode || soft cluster emb) {task: [B, 32]}
          -> LogitTransfer along the task DAG, in Kahn order                   h_t += a*SiLU(LN(W y_s))
          -> towers (TaskTower logits; ContrastiveTower similarities / tau)    {task: logits}

The towers of one DAG level run as one stacked matmul per layer (``batched``; model/towers.py
stacked_towers): the same parameters and math as the per-task loop (``batched = False``). With the
CGCAttention gate alone, the group basket's first layer reads the gate's output in factored form
(gates.BlockScaled; GroupTaskExpertBasket._factored_forward) when stacked.

Without the basket, a task's tower reads its gated representation concatenated with its HMM
projection; with `basket_skip` it reads that and the basket output side by side. Blocks are built
elsewhere (train/build.py) and passed in: composition, no config here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ple_adatt.model.shared_side import SharedExtractor
from ple_adatt.model.task_side import GroupTaskExpertBasket
from ple_adatt.model.towers import stackable_groups, stacked_towers, tower_signature


def transfer_levels(order: Sequence[str], sources: Mapping[str, Sequence[tuple[str, float]]]) -> list[list[str]]:
    """Tasks by depth in the logit-transfer DAG (``order`` is a topological order; ``sources``: task
    -> [(source, alpha)]): level 0 has no sources, level k's deepest source is at k - 1. Towers of
    one level do not read each other, so they can run as one stacked operation."""
    depth: dict[str, int] = {}
    for t in order:
        depth[t] = 1 + max((depth[s] for s, _ in sources.get(t, ())), default=-1)
    return [[t for t in order if depth[t] == d] for d in range(max(depth.values(), default=-1) + 1)]


class HeteroPLE(nn.Module):
    def __init__(self, shared: SharedExtractor, towers: nn.ModuleDict, tasks: Sequence[str],
                 basket: nn.Module | None = None, transfer: nn.Module | None = None, basket_skip: bool = False,
                 sidecars: nn.Module | None = None):
        super().__init__()
        self.shared, self.towers, self.basket, self.transfer = shared, towers, basket, transfer
        self.sidecars = sidecars  # model/sidecars.py: evidential heads / SAE, None when both are off
        self.basket_skip = basket_skip
        self.tasks = list(tasks)
        self.order = list(transfer.order) if transfer is not None else self.tasks
        self.batched = True  # towers of one DAG level run stacked; False: the reference loop (same math)
        self.levels = transfer_levels(self.order, transfer.sources if transfer is not None else {})

    def task_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{task: [B, D_in(tower)]}: the representation each tower (after logit transfer) reads."""
        reps, factored = self.shared.gated(batch)                              # {t: [B, D_t]}, BlockScaled | None
        hmm, modes = self.shared.hmm, None
        if hmm is not None:  # each mode projected once; the basket takes every mode, towers their task's
            needed = hmm.modes if self.basket is not None else sorted(set(hmm.task_modes.values()))
            modes = {m: hmm.project(batch, m) for m in needed}                 # {mode: [B, 32]}
        own = reps if modes is None else {t: torch.cat([reps[t], modes[hmm.task_modes[t]]], dim=1) for t in self.tasks}
        if self.basket is None:
            return own
        kw = {"factored": factored} if factored is not None and isinstance(self.basket, GroupTaskExpertBasket) else {}
        out = self.basket(reps, modes, cluster_probs=batch.get("cluster_probs"), **kw)   # {t: [B, 32]}
        return {t: torch.cat([out[t], own[t]], dim=1) for t in self.tasks} if self.basket_skip else out

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        h = self.task_inputs(batch)
        if self.sidecars is not None:  # evidential heads read the tower inputs, the SAE the shared experts
            self.sidecars(h, self.shared_representation())
        logits: dict[str, Tensor] = {}
        if not self.batched:
            for t in self.order:  # sources before targets, so transfer sees their logits
                x = self.transfer(t, h[t], logits) if self.transfer is not None else h[t]
                logits[t] = self.towers[t](x)
            return {t: logits[t] for t in self.tasks}
        signatures = {t: tower_signature(self.towers[t]) for t in self.tasks}
        for level in self.levels:  # a level's sources are all in earlier levels
            xs = {t: self.transfer(t, h[t], logits) if self.transfer is not None else h[t] for t in level}
            for group in stackable_groups(signatures, level):
                if len(group) == 1:
                    logits[group[0]] = self.towers[group[0]](xs[group[0]])
                else:
                    logits.update(zip(group, stacked_towers([self.towers[t] for t in group], [xs[t] for t in group])))
        return {t: logits[t] for t in self.tasks}

    def aux_losses(self) -> dict[str, Tensor]:
        """Keyword arguments for losses.aggregate_losses: CGC entropy, the causal DAG penalty, the SAE loss."""
        aux = self.shared.aux_losses()
        out = {}
        if "cgc_entropy" in aux:
            out["cgc_entropy"] = aux["cgc_entropy"]
        if "causal_dag" in aux:
            out["dag"] = aux["causal_dag"]
        if self.sidecars is not None and self.sidecars.sae_loss is not None:
            out["sae"] = self.sidecars.sae_loss
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared experts only: adaTT and GradNorm measure task gradients here (spec §11.9)."""
        return list(self.shared.shared_expert_parameters())

    def shared_head_parameters(self) -> list[nn.Parameter]:
        """Each shared expert's output head: adaTT's cheap parameter target (`expert_heads`)."""
        return self.shared.shared_expert_head_parameters()

    def shared_representation(self) -> Tensor | None:
        """Concat of the shared experts' outputs [B, D] from the last forward (cheap adaTT mode)."""
        return self.shared.last_shared

    def gate_diagnostics(self) -> dict:
        return {"weights": self.shared.gate_weights(), "entropy": self.shared.gate_entropy_ratios(),
                "labels": self.shared.gate_labels(), "tasks": list(self.shared.tasks)}

    def phase2_frozen_prefixes(self) -> list[str]:
        """Phase 2 freezes the shared experts and the CGC gate (spec §8.1)."""
        return ["shared.experts.", "shared.attention.", "shared.layers."]

    def adatt_frozen_prefixes(self) -> list[str]:
        """adaTT's FROZEN phase freezes the CGC attention gate with it (spec §7.7; train/trainable.py)."""
        return ["shared.attention."] if self.shared.attention is not None else []
