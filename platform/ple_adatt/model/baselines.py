"""Baseline multi-task family: single-task, shared-bottom, MMoE and PLE (CGCLayer levels, MLP experts).

Notation: B batch, T tasks, E experts, D width. Every model maps a batch dict to a dict of
per-task logits (binary/regression [B], multiclass/contrastive [B, C]) and shares the same
input encoder and towers, so comparisons differ only in the extraction layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ple_adatt.model.towers import TaskTower
from ple_adatt.model.gates import CGCLayer
from ple_adatt.model.layers import mlp


class InputEncoder(nn.Module):
    """Flattens float groups and embeds categorical groups: batch -> [B, D_in].

    `inputs` maps batch keys to {"kind", "shape" | "cardinalities"} (see data.preprocess.input_shapes).
    """

    def __init__(self, inputs: dict[str, dict], embedding_dim: int):
        super().__init__()
        self.float_keys = sorted(k for k, v in inputs.items() if v["kind"] != "categorical")
        self.cat_keys = sorted(k for k, v in inputs.items() if v["kind"] == "categorical")
        self.embeddings = nn.ModuleDict({
            k.replace("/", "__"): nn.ModuleList(nn.Embedding(c, embedding_dim) for c in inputs[k]["cardinalities"])
            for k in self.cat_keys
        })
        width = 1
        self.out_dim = 0
        for k in self.float_keys:
            width = 1
            for s in inputs[k]["shape"]:
                width *= s
            self.out_dim += width
        self.out_dim += sum(len(inputs[k]["cardinalities"]) * embedding_dim for k in self.cat_keys)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [batch[k].flatten(1) for k in self.float_keys]
        for k in self.cat_keys:
            idx = batch[k]  # [B, C]
            parts += [emb(idx[:, i]) for i, emb in enumerate(self.embeddings[k.replace("/", "__")])]
        return torch.cat(parts, dim=1)  # [B, D_in]


class Towers(nn.Module):
    """Per-task towers keyed by task name: {task: [B, D_t]} -> {task: logits [B] or [B, C]}."""

    def __init__(self, in_dims: dict[str, int], out_dims: dict[str, int], hidden: list[int], dropout: float):
        super().__init__()
        self.towers = nn.ModuleDict({t: TaskTower(in_dims[t], out_dims[t], hidden, dropout) for t in out_dims})

    def forward(self, reps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: tower(reps[t]) for t, tower in self.towers.items()}


class ExpertGate(nn.Module):
    """Softmax gate mixing E experts for one task: x [B, D_in], experts [B, E, D] -> [B, D]."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, num_experts)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.proj(x), dim=-1)  # [B, E]
        self.last_weights = w.detach()
        return torch.einsum("be,bed->bd", w, experts)  # [B, D]


def last_linear_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of the last ``nn.Linear`` registered in ``module`` (an MLP's output layer)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(module).__name__} has no nn.Linear layer")
    return [p for p in linears[-1].parameters() if p.requires_grad]


class _OutputRecorder:
    """Forward hook keeping each hooked module's last output (keyed by module, in hook order). An
    object, not a closure, so a deep-copied model records into its own copy."""

    def __init__(self):
        self.outputs: dict[int, torch.Tensor] = {}

    def __call__(self, module: nn.Module, _inputs, output: torch.Tensor) -> None:
        self.outputs[id(module)] = output


class MultiTaskModel(nn.Module):
    """encoder -> extractor -> towers. `extractor(x [B, D_in]) -> {task: [B, D_t]}`."""

    def __init__(self, encoder: InputEncoder, extractor: nn.Module, towers: Towers, sidecars: nn.Module | None = None):
        super().__init__()
        self.encoder, self.extractor, self.towers = encoder, extractor, towers
        self.sidecars = sidecars  # model/sidecars.py: evidential heads / SAE, None when both are off
        self._shared_out = _OutputRecorder()
        if sidecars is not None and sidecars.sae is not None:  # the SAE reads the shared modules' outputs
            for m in extractor.shared_modules():
                m.register_forward_hook(self._shared_out)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._shared_out.outputs.clear()
        reps = self.extractor(self.encoder(batch))
        if self.sidecars is not None:
            self.sidecars(reps, self.shared_outputs() if self.sidecars.sae is not None else None)
        return self.towers(reps)

    def shared_outputs(self) -> torch.Tensor | None:
        """Concat of the shared modules' outputs [B, D] of the last forward (recorded only with an SAE;
        the SAE's input; not adaTT's `representation` target, which is ple_hetero's alone)."""
        outs = list(self._shared_out.outputs.values())
        return torch.cat(outs, dim=1) if outs else None

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Regularisers of the last forward pass, as keyword arguments of losses.aggregate_losses:
        the SAE loss when the model has one; the baselines have no gate or DAG terms."""
        sae = self.sidecars.sae_loss if self.sidecars is not None else None
        return {} if sae is None else {"sae": sae}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task shares (GradNorm and adaTT measure task gradients on them)."""
        return list(self.extractor.shared_parameters())

    def shared_head_parameters(self) -> list[nn.Parameter]:
        """The output layer of every shared module (adaTT `affinity_on: expert_heads`)."""
        return [p for m in self.extractor.shared_modules() for p in last_linear_parameters(m)]


class SharedBottom(nn.Module):
    """One shared MLP for every task (Caruana 1997)."""

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], dropout: float):
        super().__init__()
        self.bottom, self.tasks, self.out_dim = mlp(in_dim, hidden, dropout=dropout), tasks, hidden[-1]

    def shared_parameters(self):
        return self.bottom.parameters()

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottom]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)  # [B, D]
        return {t: h for t in self.tasks}


class SingleTask(nn.Module):
    """One independent MLP per task: the no-sharing reference."""

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], dropout: float):
        super().__init__()
        self.nets = nn.ModuleDict({t: mlp(in_dim, hidden, dropout=dropout) for t in tasks})
        self.out_dim = hidden[-1]

    def shared_parameters(self):
        return iter(())  # nothing is shared

    def shared_modules(self) -> list[nn.Module]:
        return []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: net(x) for t, net in self.nets.items()}


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018): E shared experts, one gate per task."""

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], num_experts: int, dropout: float):
        super().__init__()
        self.experts = nn.ModuleList(mlp(in_dim, hidden, dropout=dropout) for _ in range(num_experts))
        self.gates = nn.ModuleDict({t: ExpertGate(in_dim, num_experts) for t in tasks})
        self.out_dim = hidden[-1]

    def shared_parameters(self):
        return self.experts.parameters()

    def shared_modules(self) -> list[nn.Module]:
        return list(self.experts)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.stack([f(x) for f in self.experts], dim=1)  # [B, E, D]
        return {t: g(x, e) for t, g in self.gates.items()}


class PLE(nn.Module):
    """Progressive layered extraction (Tang et al., RecSys 2020): `num_levels` CGC levels (1 level = CGC),
    each the package's one PLE level (model/gates.py CGCLayer) with MLP experts of widths `hidden`.
    Level i's task gate mixes the shared experts then the task's own; every level but the last has a
    shared gate over all experts, which feeds the next level's shared experts."""

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], n_shared: int, n_task: int,
                 num_levels: int, dropout: float):
        super().__init__()
        self.tasks = tasks
        self.levels = nn.ModuleList(
            CGCLayer(d, tasks, expert_dim=hidden[-1], n_shared=n_shared, n_task=n_task, shared_gate=i < num_levels - 1,
                     expert=lambda d=d: mlp(d, hidden, dropout=dropout))
            for i, d in enumerate([in_dim] + [hidden[-1]] * (num_levels - 1))
        )
        self.out_dim = hidden[-1]

    def shared_parameters(self):
        return (p for level in self.levels for p in level.shared.parameters())

    def shared_modules(self) -> list[nn.Module]:
        """The last level's shared experts: the last layer every task shares."""
        return list(self.levels[-1].shared)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        xs, shared = {t: x for t in self.tasks}, x
        for level in self.levels:
            xs, shared = level(xs, shared)
        return xs

    def gate_weights(self) -> dict[str, torch.Tensor]:
        """Last batch's mean gate weight per task, final level: {task: [E]} (shared experts first)."""
        w = self.levels[-1].gate_weights()  # [T, E] or None
        return {} if w is None else dict(zip(self.levels[-1].tasks, w))
