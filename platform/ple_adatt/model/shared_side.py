"""PLE shared side: feature router -> heterogeneous shared experts -> CGC gate -> per-task representations.

Shapes: B batch, T tasks, E active experts, D = sum of expert widths (the shared concat).
Build it from dataset group declarations with `build_shared_extractor`; the lead's model builder maps
config fields onto its keyword arguments (this module never reads the config).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .experts import EXPERTS
from .experts._io import head_parameters
from .gates import BlockScaled, CGCAttention, CGCLayer, _LastForward, entropy_ratio
from .routing import FeatureRouter, GroupDecl, HMMProjector

GATES = ("attention", "layer", "both")


class SharedExtractor(nn.Module):
    """Composes built blocks: experts (name -> module with `.out_dim`, forward(batch) -> [B, d_i]),
    an optional CGCAttention over their concat, optional stacked CGCLayers (level 0 takes the experts
    as external shared experts), and an optional HMMProjector.

    forward(batch) -> {task: [B, task_out_dim]}: the CGCAttention output [B, D] and/or the last CGCLayer
    output [B, expert_dim], concatenated in that order when both gates are on.
    Attributes: `expert_names`, `block_dims`, `shared_dim` (D), `task_out_dim`, `hmm_dim` (0 without HMM).
    """

    def __init__(self, experts: Mapping[str, nn.Module], tasks: Sequence[str], attention: CGCAttention | None = None,
                 layers: Sequence[CGCLayer] = (), hmm: HMMProjector | None = None):
        super().__init__()
        if attention is None and not layers:
            raise ValueError("SharedExtractor needs a gate: a CGCAttention, CGCLayers, or both")
        self.experts = nn.ModuleDict(dict(experts))
        self.tasks = list(tasks)
        self.expert_names = list(self.experts)
        self.block_dims = [int(m.out_dim) for m in self.experts.values()]
        self.shared_dim = sum(self.block_dims)
        if attention is not None and attention.block_dims != self.block_dims:
            raise ValueError(f"CGCAttention blocks {attention.block_dims} != expert widths {self.block_dims}")
        self.attention = attention
        self.layers = nn.ModuleList(layers)
        self.hmm = hmm
        self.task_out_dim = (self.shared_dim if attention is not None else 0) + (layers[-1].expert_dim if layers else 0)
        self.hmm_dim = hmm.out_dim if hmm is not None else 0
        self._last = _LastForward()

    def expert_outputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{expert: [B, d_i]} in block order."""
        return {n: m(batch) for n, m in self.experts.items()}

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.gated(batch)[0]

    def gated(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], BlockScaled | None]:
        """forward's {task: [B, task_out_dim]}, plus the same output in factored form (CGCAttention's
        `BlockScaled`) when CGCAttention is the only gate, else None."""
        outs = self.expert_outputs(batch)
        h = torch.cat(list(outs.values()), dim=1)                               # [B, D]
        self._last["shared"] = h  # adaTT's representation-affinity mode (one batch; not copied/pickled)
        parts: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        factored = None
        if self.attention is not None:
            factored = self.attention.factored(h)
            for t, x in factored.expand().items():                              # [B, D] each
                parts[t].append(x)
        if len(self.layers):
            task_in, shared_in = {t: h for t in self.tasks}, h
            for i, layer in enumerate(self.layers):
                task_in, shared_in = layer(task_in, shared_in, list(outs.values()) if i == 0 else ())
            for t in self.tasks:
                parts[t].append(task_in[t])                                     # [B, expert_dim]
        reps = {t: p[0] if len(p) == 1 else torch.cat(p, dim=1) for t, p in parts.items()}
        return reps, None if len(self.layers) else factored

    @property
    def last_shared(self) -> Tensor | None:
        """The shared expert concat [B, D] of the last forward."""
        return self._last.get("shared")

    def hmm_embeddings(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{task: [B, hmm_dim]} (empty without HMM modes)."""
        return self.hmm(batch) if self.hmm is not None else {}

    def aux_losses(self) -> dict[str, Tensor]:
        """Already-weighted auxiliary losses of the last forward; add them to the total as they are.
        `cgc_entropy` (training, gate not frozen) and `causal_dag` (dag + sparsity + reconstruction)."""
        out = {}
        if self.attention is not None:
            out["cgc_entropy"] = self.attention.entropy_loss()
        if "causal" in self.experts:
            out["causal_dag"] = sum(self.experts["causal"].regularizer().values())
        return out

    def gate_weights(self) -> dict[str, Tensor]:
        """Batch-mean gates of the last forward, detached: {'attention': [T, E], 'layer<i>': [T, N_i]}."""
        out = {}
        if self.attention is not None and self.attention.gate_weights() is not None:
            out["attention"] = self.attention.gate_weights()
        for i, layer in enumerate(self.layers):
            if layer.gate_weights() is not None:
                out[f"layer{i}"] = layer.gate_weights()
        return out

    def gate_entropy_ratios(self) -> dict[str, Tensor]:
        """Per-task mean gate entropy / log(N) of the last batch: {gate: [T]} (1 = uniform, 0 = one expert)."""
        out = {}
        if self.attention is not None and self.attention.last_weights is not None:
            out["attention"] = entropy_ratio(self.attention.last_weights)
        for i, layer in enumerate(self.layers):
            if layer.last_weights is not None:
                out[f"layer{i}"] = entropy_ratio(layer.last_weights)
        return out

    def gate_labels(self) -> dict[str, list[str]]:
        """Column labels of each `gate_weights()` matrix (rows are `self.tasks`)."""
        out = {"attention": list(self.expert_names)} if self.attention is not None else {}
        out.update({f"layer{i}": list(layer.expert_labels) for i, layer in enumerate(self.layers)})
        return out

    def freeze_gate(self) -> None:
        """Freeze CGCAttention (adaTT freeze_epoch / Phase 2); the flag is checkpointed."""
        if self.attention is not None:
            self.attention.freeze()

    def shared_expert_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared experts only (the adaTT gradient target, spec §11.9)."""
        return (p for p in self.experts.parameters() if p.requires_grad)

    def shared_expert_head_parameters(self) -> list[nn.Parameter]:
        """Parameters of each shared expert's output head (adaTT `affinity_on: expert_heads`)."""
        return [p for e in self.experts.values() for p in head_parameters(e)]

    def param_groups(self, expert_lr: Mapping[str, float] | None = None, expert_wd: Mapping[str, float] | None = None,
                     base_lr: float = 1e-3, base_wd: float = 0.0) -> list[dict]:
        """Optimizer parameter groups: one per expert with an lr/wd override, one 'base' group for the rest.

        Names must be registry expert names; overrides for experts not in this model (dropped by the
        router or switched off) are ignored so leave-one-out runs can share one config.
        """
        expert_lr, expert_wd = dict(expert_lr or {}), dict(expert_wd or {})
        unknown = sorted(n for n in {*expert_lr, *expert_wd} if n not in EXPERTS)
        if unknown:
            raise ValueError(f"expert_lr/expert_wd: unknown expert(s) {unknown} (valid: {list(EXPERTS)})")
        groups, taken = [], set()
        for name in self.expert_names:
            if name in expert_lr or name in expert_wd:
                params = list(self.experts[name].parameters())
                taken |= {id(p) for p in params}
                groups.append({"name": f"expert/{name}", "params": params,
                               "lr": expert_lr.get(name, base_lr), "weight_decay": expert_wd.get(name, base_wd)})
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [{"name": "base", "params": rest, "lr": base_lr, "weight_decay": base_wd}, *groups]


def build_shared_extractor(
    groups: Mapping[str, GroupDecl | Mapping | Sequence], tasks: Sequence[str],
    experts: Sequence[str] = ("deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"),
    *, required: Sequence[str] = (), expert_enabled: Mapping[str, bool] | None = None,
    expert_kwargs: Mapping[str, Mapping] | None = None, dropout: float = 0.1,
    gate: str = "attention", gate_type: str = "softmax", dim_normalize: bool = True,
    domain_prior: Mapping[str, Sequence[str]] | None = None, bias_high: float = 1.0, bias_low: float = -1.0,
    entropy_weight: float = 0.01, cgc_layers: int = 1, cgc_expert_dim: int = 64, cgc_shared_experts: int = 1,
    cgc_task_experts: int = 1, hmm_modes: Sequence[str] = (), task_hmm_mode: Mapping[str, str] | None = None,
    hmm_default_mode: str | None = None,
) -> SharedExtractor:
    """Router -> experts -> gate(s) -> HMM, from dataset group declarations.

    groups:        {group: {kind, shape|cardinalities, experts}} (see GroupDecl)
    experts:       configured expert names, in block order; experts no group routes to are left out
    expert_kwargs: {expert: extra constructor kwargs} (e.g. {'hgcn': {'out_dim': 128}, 'temporal': {'hidden': 32}})
    gate:          'attention' (G1 CGCAttention, recommended) | 'layer' (cgc_layers stacked CGCLayers) | 'both'
    domain_prior:  {task: [preferred experts]} for the CGCAttention bias init
    hmm_modes:     HMM modes present in the dataset (none: no HMM projector)
    """
    if gate not in GATES:
        raise ValueError(f"gate: '{gate}' is not one of {list(GATES)}")
    if cgc_layers < 1:
        raise ValueError(f"cgc_layers must be >= 1, got {cgc_layers}")
    router = FeatureRouter(groups, experts, required=required, expert_enabled=expert_enabled)
    expert_kwargs = dict(expert_kwargs or {})
    bad = sorted(set(expert_kwargs) - set(EXPERTS))
    if bad:
        raise ValueError(f"expert_kwargs: unknown expert(s) {bad} (valid: {list(EXPERTS)})")
    modules = {}
    for name, r in router.routes.items():
        kw = {"dropout": dropout, **expert_kwargs.get(name, {})}
        try:
            modules[name] = EXPERTS[name](r.inputs, r.cat_cardinalities, **kw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"expert '{name}' (groups {r.groups}): {err}") from err
    dims = [m.out_dim for m in modules.values()]
    attention = None
    if gate in ("attention", "both"):
        attention = CGCAttention(dims, tasks, list(modules), domain_prior, bias_high, bias_low,
                                 dim_normalize, gate_type, entropy_weight)
    layers = []
    if gate in ("layer", "both"):
        d = sum(dims)
        for i in range(cgc_layers):
            layers.append(CGCLayer(d if i == 0 else cgc_expert_dim, tasks, cgc_expert_dim,
                                   n_shared=0 if i == 0 else cgc_shared_experts, n_task=cgc_task_experts,
                                   dropout=dropout, shared_gate=i < cgc_layers - 1,
                                   external_dims=dims if i == 0 else (), external_names=list(modules) if i == 0 else None,
                                   gate_type=gate_type))
    hmm = HMMProjector(hmm_modes, tasks, task_hmm_mode, hmm_default_mode) if hmm_modes else None
    model = SharedExtractor(modules, tasks, attention, layers, hmm)
    model.router = router  # plain attribute (not a module): dropped experts and unused groups, for logging
    return model
