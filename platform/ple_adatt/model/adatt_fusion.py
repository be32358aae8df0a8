"""Meta's AdaTT-sp (Li, Zhang, Jin et al., "AdaTT: Adaptive Task-to-Task Fusion Network for
Multitask Learning in Recommendations", KDD 2023, arXiv:2304.04959), written from the paper's
description with the package's MLP experts (model/layers.py), as an extractor of the MLP family
(model/baselines.py MultiTaskModel). ``model.arch=adatt_fusion``.

Not to be confused with ``adatt.enabled``: that is the seed's loss-level transfer (gradient affinity
re-weighting task losses, adatt/); this is representation-level fusion, a competitor of PLE.

Notation: B batch, T tasks, m experts per task group, s shared experts, E = T·m + s, D width.

One fusion level, for task t with input x_t [B, D_in] (the previous level's output for t):

    experts   e = [E_{1,1..m}(x_1), ..., E_{T,1..m}(x_T), S_{1..s}(x_shared)]      [B, E, D]
    gate      g_t = softmax(W_t x_t)                                               [B, E]
    fusion    f_t = Σ_e g_{t,e} e_e + Σ_k v_{t,k} E_{t,k}(x_t)                     [B, D]

The first term is the all-expert fusion: every task reads every other task's experts, weighted per
example. The second is the native-expert linear fusion: a residual of the task's own experts with
learnable weights v_t (with a single expert per group the residual is that expert's output). Every
level but the last also fuses a shared output the same way (gate over all experts + residual of the
shared experts), which the next level's shared experts read. Unlike PLE's CGC, whose task gate sees
only the shared experts and its own, each task here may draw on any other task's experts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ple_adatt.model.layers import mlp


def _native_weights(n: int) -> nn.Parameter | None:
    """Learnable linear-fusion weights of a group of n > 1 experts (uniform ±1/√n, as the paper's
    residual is a free linear combination); None for a single expert (weight fixed at 1)."""
    if n <= 1:
        return None
    bound = 1.0 / math.sqrt(n)
    return nn.Parameter(torch.empty(n).uniform_(-bound, bound))


def _native(outputs: list[Tensor], weights: nn.Parameter | None) -> Tensor:
    """Σ_k v_k o_k over a group's expert outputs [B, D] each -> [B, D]."""
    if weights is None:
        return outputs[0]
    return torch.einsum("k,bkd->bd", weights, torch.stack(outputs, dim=1))


class FusionLevel(nn.Module):
    """One AdaTT-sp level: task groups of ``n_task`` experts, a shared group of ``n_shared``, a
    fusion gate per task over all experts, and (``fuse_shared``) a shared fusion unit for the next level.

    forward({task: [B, in_dim]}, shared [B, in_dim] | None) -> ({task: [B, D]}, shared [B, D] | None)."""

    def __init__(self, in_dim: int, tasks: Sequence[str], hidden: Sequence[int], n_task: int, n_shared: int,
                 dropout: float, fuse_shared: bool):
        super().__init__()
        self.tasks, self.n_task, self.n_shared = list(tasks), n_task, n_shared
        n_all = n_task * len(self.tasks) + n_shared
        self.task_experts = nn.ModuleDict({t: nn.ModuleList(mlp(in_dim, hidden, dropout=dropout) for _ in range(n_task))
                                           for t in self.tasks})
        self.shared = nn.ModuleList(mlp(in_dim, hidden, dropout=dropout) for _ in range(n_shared))
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, n_all) for t in self.tasks})
        self.native = nn.ParameterDict({t: w for t in self.tasks if (w := _native_weights(n_task)) is not None})
        self.fuse_shared = fuse_shared and n_shared > 0
        self.shared_gate = nn.Linear(in_dim, n_all) if self.fuse_shared else None
        self.shared_native = _native_weights(n_shared) if self.fuse_shared else None
        self.last_weights: Tensor | None = None  # [B, T, E] detached, diagnostics only

    def forward(self, task_inputs: dict[str, Tensor], shared_input: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        own = {t: [e(task_inputs[t]) for e in self.task_experts[t]] for t in self.tasks}
        shared = [e(shared_input) for e in self.shared]
        experts = torch.stack([o for t in self.tasks for o in own[t]] + shared, dim=1)        # [B, E, D]
        out, weights = {}, []
        for t in self.tasks:
            g = torch.softmax(self.gates[t](task_inputs[t]), dim=-1)                          # [B, E]
            weights.append(g)
            out[t] = torch.einsum("be,bed->bd", g, experts) + _native(own[t], self.native[t] if t in self.native else None)
        self.last_weights = torch.stack(weights, dim=1).detach()
        shared_out = None
        if self.fuse_shared:
            g = torch.softmax(self.shared_gate(shared_input), dim=-1)                          # [B, E]
            shared_out = torch.einsum("be,bed->bd", g, experts) + _native(shared, self.shared_native)
        return out, shared_out


class AdaTTSp(nn.Module):
    """Stacked AdaTT-sp fusion levels over one input: x [B, D_in] -> {task: [B, hidden[-1]]}.

    Level 1's task groups and shared group all read x; level i > 1 reads the previous level's
    per-task outputs (and its shared output). Same extractor interface as model/baselines.PLE."""

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], n_task: int, n_shared: int,
                 num_levels: int, dropout: float):
        super().__init__()
        if n_task < 1:
            raise ValueError(f"AdaTT-sp needs >= 1 expert per task group, got num_task_experts={n_task}")
        self.tasks = list(tasks)
        self.levels = nn.ModuleList(
            FusionLevel(d, tasks, hidden, n_task, n_shared, dropout, fuse_shared=i < num_levels - 1)
            for i, d in enumerate([in_dim] + [hidden[-1]] * (num_levels - 1)))
        self.out_dim = hidden[-1]

    def shared_parameters(self):
        """The shared experts of every level (adaTT / GradNorm measure task gradients here)."""
        return (p for level in self.levels for p in level.shared.parameters())

    def shared_modules(self) -> list[nn.Module]:
        """The last level's shared experts: the last layer every task reads through its gate."""
        return list(self.levels[-1].shared)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        xs, shared = {t: x for t in self.tasks}, x
        for level in self.levels:
            xs, shared = level(xs, shared)
        return xs

    def gate_weights(self) -> dict[str, Tensor]:
        """Last batch's mean fusion-gate weight per task, final level: {task: [E]} (task groups in
        task order, then the shared experts)."""
        w = self.levels[-1].last_weights
        return {} if w is None else dict(zip(self.tasks, w.mean(0)))
