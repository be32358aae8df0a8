"""CGC gates: `CGCAttention` (per-task block re-weighting of the shared concat; the default gate) and
`CGCLayer` (paper-exact PLE extraction level, Tang et al. 2020; stackable). The heatmap: train/diagnostics.py.

Shapes: B batch, T tasks, E expert blocks, D concat width, N experts a CGCLayer gate mixes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import mlp

GATE_TYPES = ("softmax", "sigmoid")

# The G1 domain prior (spec §4.1, PLE-PDF pp. 28-29) keyed by the spec's task names; causal and
# optimal_transport are preferred by no task. A dataset with other task names passes its own table.
SPEC_DOMAIN_PRIOR = {
    "ctr": ["perslay", "temporal", "hgcn"], "cvr": ["perslay", "temporal", "hgcn"],
    "churn": ["perslay", "temporal"], "retention": ["perslay", "temporal"], "life_stage": ["perslay", "temporal"],
    "nba": ["perslay", "hgcn", "lightgcn"],
    "balance_util": ["temporal"], "engagement": ["temporal"], "channel": ["temporal"], "timing": ["temporal"],
    "consumption_cycle": ["temporal"],
    "ltv": ["temporal", "deepfm"], "spending_category": ["hgcn", "perslay"], "spending_bucket": ["deepfm"],
    "brand_prediction": ["hgcn"], "merchant_affinity": ["hgcn", "temporal"],
}


def dimension_scales(block_dims: Sequence[int]) -> Tensor:
    """s_i = sqrt(mean_dim / d_i) [E]: stops wide blocks (HGCN 128D) dominating narrow ones in the concat."""
    d = torch.tensor([float(x) for x in block_dims])
    return (d.mean() / d).sqrt()


def gate_probs(logits: Tensor, gate_type: str) -> Tensor:
    """[..., E] logits -> weights summing to 1 over E (softmax, or sigmoids renormalised)."""
    if gate_type == "softmax":
        return torch.softmax(logits, dim=-1)
    s = torch.sigmoid(logits)
    return s / s.sum(-1, keepdim=True).clamp_min(1e-6)


def entropy_ratio(w: Tensor) -> Tensor:
    """Mean entropy of gate rows over the batch divided by log(E): w [B, T, E] -> [T] in [0, 1]."""
    wf = w.detach().float().clamp_min(1e-6)
    return -(wf * wf.log()).sum(-1).mean(0) / math.log(w.shape[-1]) if w.shape[-1] > 1 else wf.new_zeros(w.shape[1])


class _LastForward(dict):
    """Cache of last-forward graph tensors (needed by a loss term). Deep-copies and pickles as empty: a
    non-leaf tensor would make copy.deepcopy(model) fail after any forward (EMA, best-model snapshots)."""

    def __deepcopy__(self, memo):
        return _LastForward()

    def __reduce__(self):
        return (_LastForward, ())


class BlockScaled(NamedTuple):
    """CGCAttention's output in factored form: task k's output is h with block i scaled by
    scales[k][:, i] (= w_{k,i} * s_i). A consumer whose first layer is linear can project h's blocks
    once for all tasks instead of once per task (model/task_side.GroupTaskExpertBasket).

    h [B, D]; scales {task: [B, E]}; block_dims [E] (sum D); block_index [D]: the block of each column."""

    h: Tensor
    scales: dict[str, Tensor]
    block_dims: list[int]
    block_index: Tensor

    def expand(self) -> dict[str, Tensor]:
        """{task: [B, D]}: h with each block scaled, the CGCAttention output."""
        return {t: torch.index_select(s, 1, self.block_index) * self.h for t, s in self.scales.items()}


class CGCAttention(nn.Module):
    """Per-task softmax over expert blocks of the shared concat (spec §4.1, G1).

    forward(h [B, D]) -> {task: [B, D]}, block i of task k scaled by w_{k,i} * s_i, where
    w_k = softmax(W_k h + b_k) [E]. Output width = input width (`out_dim`).

    Domain prior: gate weight zeroed; bias = bias_high for a task's preferred experts, bias_low for the
    others (tasks absent from `domain_prior` start uniform at 0). Entropy regulariser: `entropy_loss()`
    = lambda_ent * (-1/T) sum_k mean_b H(w_k) over the last forward, fp32, w clamped >= 1e-6; zero when
    frozen or in eval mode. `freeze()` stops gate training; the flag is a persistent buffer so a
    checkpoint restores it (and `requires_grad` is re-synced on load).
    """

    def __init__(self, block_dims: Sequence[int], tasks: Sequence[str], expert_names: Sequence[str] | None = None,
                 domain_prior: Mapping[str, Sequence[str]] | None = None, bias_high: float = 1.0, bias_low: float = -1.0,
                 dim_normalize: bool = True, gate_type: str = "softmax", entropy_weight: float = 0.01):
        super().__init__()
        if gate_type not in GATE_TYPES:
            raise ValueError(f"gate_type: '{gate_type}' is not one of {list(GATE_TYPES)}")
        self.block_dims = [int(d) for d in block_dims]
        self.tasks = list(tasks)
        self.expert_names = list(expert_names) if expert_names is not None else [f"e{i}" for i in range(len(block_dims))]
        if len(self.expert_names) != len(self.block_dims):
            raise ValueError(f"{len(self.expert_names)} expert names for {len(self.block_dims)} blocks")
        self.gate_type, self.entropy_weight = gate_type, entropy_weight
        self.out_dim = sum(self.block_dims)
        E, T = len(self.block_dims), len(self.tasks)
        # Stacked per-task gates [T, E, D]: one einsum instead of T small Linear calls.
        self.weight = nn.Parameter(torch.zeros(T, E, self.out_dim))
        self.bias = nn.Parameter(self.prior_bias(domain_prior or {}, bias_high, bias_low))
        scales = dimension_scales(self.block_dims) if dim_normalize else torch.ones(E)
        self.register_buffer("scales", scales)
        self.register_buffer("block_index", torch.repeat_interleave(torch.arange(E), torch.tensor(self.block_dims)),
                             persistent=False)
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_load_state_dict_post_hook(_resync_after_load)  # module-level fn: keeps the module picklable
        self._last = _LastForward()                 # 'weights': [B, T, E] with grad (entropy term)

    @property
    def last_weights(self) -> Tensor | None:
        """Gate weights of the last forward [B, T, E] (with grad)."""
        return self._last.get("weights")

    def prior_bias(self, prior: Mapping[str, Sequence[str]], high: float, low: float) -> Tensor:
        """[T, E] bias pattern: high on each task's preferred experts, low elsewhere; 0 for tasks without a prior."""
        bias = torch.zeros(len(self.tasks), len(self.expert_names))
        for task, preferred in prior.items():
            if task not in self.tasks:
                continue  # prior tables cover every known task; a run may train a subset
            unknown = [e for e in preferred if e not in self.expert_names]
            if unknown and len(unknown) == len(preferred):
                # Every preferred expert is absent (e.g. left out by leave-one-out): keep the task uniform.
                continue
            t = self.tasks.index(task)
            bias[t] = low
            for e in preferred:
                if e in self.expert_names:
                    bias[t, self.expert_names.index(e)] = high
        return bias

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        """h [B, D] (the shared concat, blocks in `expert_names` order) -> {task: [B, D]}."""
        return self.factored(h).expand()

    def factored(self, h: Tensor) -> BlockScaled:
        """h [B, D] -> the same output as `forward`, unexpanded: h and each task's block scales w_k * s."""
        if h.shape[-1] != self.out_dim:
            raise ValueError(f"CGCAttention expects [B, {self.out_dim}], got {list(h.shape)}")
        # One small graph per task rather than one [B, T, D] tensor for all: adaTT takes a separate
        # backward per task loss, and each would otherwise pay for every task's gate (spec §7.1).
        scales, weights = {}, []
        for t, wt, bt in zip(self.tasks, self.weight.unbind(0), self.bias.unbind(0)):
            w = gate_probs(F.linear(h, wt, bt), self.gate_type)             # [B, E]
            weights.append(w)
            scales[t] = w * self.scales
        self._last["weights"] = torch.stack(weights, dim=1)                # [B, T, E]
        return BlockScaled(h, scales, self.block_dims, self.block_index)

    def entropy_loss(self) -> Tensor:
        """lambda_ent * (-mean_k mean_b H(w_k)) of the last forward (scalar); 0 if frozen, in eval, or before a forward."""
        if self.last_weights is None or not self.training or bool(self.frozen) or self.entropy_weight == 0:
            return self.bias.new_zeros(())
        with torch.autocast(device_type=self.bias.device.type, enabled=False):
            w = self.last_weights.float().clamp_min(1e-6)
            ent = -(w * w.log()).sum(-1)                                   # [B, T]
            return self.entropy_weight * -ent.mean()

    def freeze(self) -> None:
        self.frozen.fill_(True)   # in place: the buffer object stays registered and checkpointed
        self._sync_requires_grad()

    def unfreeze(self) -> None:
        self.frozen.fill_(False)
        self._sync_requires_grad()

    def _sync_requires_grad(self) -> None:
        for p in (self.weight, self.bias):
            p.requires_grad_(not bool(self.frozen))

    def gate_weights(self) -> Tensor | None:
        """Batch-mean gate of the last forward, detached [T, E]."""
        return None if self.last_weights is None else self.last_weights.detach().mean(0)


def _resync_after_load(module: CGCAttention, _incompatible_keys) -> None:
    module._sync_requires_grad()


class CGCLayer(nn.Module):
    """One paper-exact PLE extraction level (CGC, Tang et al. 2020).

    Shared experts read `shared_input`; task k's own experts read `task_inputs[k]`; task k's gate,
    softmax(Linear_k(task_inputs[k])), mixes its N = n_external + n_shared + n_task experts:
    h_k = sum_n g_{k,n} e_n  [B, expert_dim]. Optional `external` shared expert outputs (e.g. the
    heterogeneous experts, computed elsewhere) join the shared pool after a projection to expert_dim.
    With `shared_gate` (every level but the last) a shared gate over all experts produces the next
    level's shared input. Stack levels by feeding (task_out, shared_out) into the next layer
    (in_dim = expert_dim). The one PLE level of the package: the `ple` baseline stacks it too, with
    `expert` building its MLP experts (model/baselines.py PLE).

    expert: () -> module [B, in_dim] -> [B, expert_dim] (default: `mlp(in_dim, hidden, expert_dim, dropout)`).
    """

    def __init__(self, in_dim: int, tasks: Sequence[str], expert_dim: int = 64, n_shared: int = 1, n_task: int = 1,
                 hidden: Sequence[int] = (128,), dropout: float = 0.1, shared_gate: bool = False,
                 external_dims: Sequence[int] = (), external_names: Sequence[str] | None = None, gate_type: str = "softmax",
                 expert: Callable[[], nn.Module] | None = None):
        super().__init__()
        if gate_type not in GATE_TYPES:
            raise ValueError(f"gate_type: '{gate_type}' is not one of {list(GATE_TYPES)}")
        self.tasks, self.expert_dim, self.gate_type = list(tasks), expert_dim, gate_type
        self.n_external, self.n_shared, self.n_task = len(external_dims), n_shared, n_task
        if self.n_external + n_shared + n_task == 0:
            raise ValueError("CGCLayer needs at least one expert")
        self.external_proj = nn.ModuleList(nn.Identity() if d == expert_dim else nn.Linear(d, expert_dim)
                                           for d in external_dims)
        expert = expert or (lambda: mlp(in_dim, hidden, expert_dim, dropout))
        self.shared = nn.ModuleList(expert() for _ in range(n_shared))
        self.task_experts = nn.ModuleDict({t: nn.ModuleList(expert() for _ in range(n_task)) for t in self.tasks})
        n_gate = self.n_external + n_shared + n_task
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, n_gate) for t in self.tasks})
        n_all = self.n_external + n_shared + n_task * len(self.tasks)
        self.shared_gate = nn.Linear(in_dim, n_all) if shared_gate else None
        ext = list(external_names) if external_names is not None else [f"ext{i}" for i in range(self.n_external)]
        self.expert_labels = ext + [f"shared{i}" for i in range(n_shared)] + [f"task{i}" for i in range(n_task)]
        self.last_weights: Tensor | None = None   # [B, T, N], detached (diagnostics only)

    def forward(self, task_inputs: Mapping[str, Tensor], shared_input: Tensor,
                external: Sequence[Tensor] = ()) -> tuple[dict[str, Tensor], Tensor | None]:
        """task_inputs {task: [B, in_dim]}, shared_input [B, in_dim], external [B, d_j] each
        -> ({task: [B, expert_dim]}, shared output [B, expert_dim] or None)."""
        if len(external) != self.n_external:
            raise ValueError(f"CGCLayer built for {self.n_external} external experts, got {len(external)}")
        pool = [p(e) for p, e in zip(self.external_proj, external)] + [m(shared_input) for m in self.shared]
        outs, weights, own_all = {}, [], []
        for t in self.tasks:
            own = [m(task_inputs[t]) for m in self.task_experts[t]]
            own_all += own
            experts = torch.stack(pool + own, dim=1)                                   # [B, N, expert_dim]
            g = gate_probs(self.gates[t](task_inputs[t]), self.gate_type)              # [B, N]
            weights.append(g)
            outs[t] = torch.einsum("bn,bnd->bd", g, experts)
        self.last_weights = torch.stack(weights, dim=1).detach()                       # [B, T, N]
        shared_out = None
        if self.shared_gate is not None:
            g = gate_probs(self.shared_gate(shared_input), self.gate_type)             # [B, N_all]
            shared_out = torch.einsum("bn,bnd->bd", g, torch.stack(pool + own_all, dim=1))
        return outs, shared_out

    def gate_weights(self) -> Tensor | None:
        """Batch-mean task gates of the last forward, detached [T, N] (columns: `expert_labels`)."""
        return None if self.last_weights is None else self.last_weights.detach().mean(0)
