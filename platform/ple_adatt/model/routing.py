"""Feature router (dataset group declarations -> per-expert inputs) and HMM triple-mode projection.

Shapes: B batch, T tasks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .experts import EXPERTS
from .experts._io import batch_size

FLOAT_KINDS = ("numeric", "list")
KINDS = (*FLOAT_KINDS, "categorical")


@dataclass(frozen=True)
class GroupDecl:
    """One dataset feature group: kind (numeric | list | categorical), `shape` (float groups, without B)
    or `cardinalities` (categorical: embedding table size per column, 0 slot included), the experts it feeds."""
    kind: str
    shape: tuple[int, ...] = ()
    cardinalities: tuple[int, ...] = ()
    experts: tuple[str, ...] = ()

    @staticmethod
    def parse(name: str, decl: GroupDecl | Mapping | Sequence) -> GroupDecl:
        """Accept a GroupDecl, {kind, shape|cardinalities, experts}, or (kind, shape_or_cardinalities, experts)."""
        if isinstance(decl, GroupDecl):
            return decl
        if isinstance(decl, Mapping):
            kind, dims, experts = decl.get("kind"), decl.get("shape", decl.get("cardinalities")), decl.get("experts", ())
        else:
            kind, dims, experts = decl
        if kind not in KINDS:
            raise ValueError(f"group '{name}': kind '{kind}' is not one of {list(KINDS)}")
        if not dims or any(int(d) <= 0 for d in dims):
            raise ValueError(f"group '{name}': {'cardinalities' if kind == 'categorical' else 'shape'} must be "
                             f"positive integers, got {dims}")
        dims = tuple(int(d) for d in dims)
        if kind == "categorical":
            return GroupDecl(kind, cardinalities=dims, experts=tuple(experts))
        return GroupDecl(kind, shape=dims, experts=tuple(experts))


@dataclass
class ExpertInputs:
    """What one expert receives: constructor kwargs `inputs` and `cat_cardinalities`."""
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    cat_cardinalities: dict[str, list[int]] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return [*self.inputs, *self.cat_cardinalities]


class FeatureRouter:
    """Turns group declarations into per-expert inputs and decides which experts exist.

    groups:         {group: GroupDecl | {kind, shape|cardinalities, experts} | (kind, dims, experts)}
    experts:        the configured expert names (order = block order in the shared concat)
    required:       configured experts that must receive input; error if one cannot
    expert_enabled: {name: False} switches an expert off (leave-one-out ablations); wins over `required`

    Attributes: `routes` {expert: ExpertInputs} for the active experts, `active` (ordered names),
    `dropped` {expert: reason}, `unused_groups` (groups no active expert reads).
    """

    def __init__(self, groups: Mapping[str, GroupDecl | Mapping | Sequence], experts: Sequence[str],
                 required: Sequence[str] = (), expert_enabled: Mapping[str, bool] | None = None):
        self.groups = {g: GroupDecl.parse(g, d) for g, d in groups.items()}
        expert_enabled = dict(expert_enabled or {})
        errors = []
        for label, names in (("experts", experts), ("required", required), ("expert_enabled", list(expert_enabled))):
            errors += [f"{label}: unknown expert '{e}' (valid: {list(EXPERTS)})" for e in names if e not in EXPERTS]
        for g, d in self.groups.items():
            errors += [f"group '{g}'.experts: unknown expert '{e}' (valid: {list(EXPERTS)})"
                       for e in d.experts if e not in EXPERTS]
        errors += [f"required: expert '{e}' is not in the configured experts {list(experts)}"
                   for e in required if e in EXPERTS and e not in experts]
        if len(set(experts)) != len(experts):
            errors.append(f"experts: duplicate names in {list(experts)}")
        if errors:
            raise ValueError("feature router:\n  " + "\n  ".join(errors))

        self.routes: dict[str, ExpertInputs] = {}
        self.dropped: dict[str, str] = {}
        for e in experts:
            if not expert_enabled.get(e, True):
                self.dropped[e] = "switched off by expert_enabled"
                continue
            r = ExpertInputs()
            for g, d in self.groups.items():
                if e in d.experts:
                    if d.kind == "categorical":
                        r.cat_cardinalities[g] = list(d.cardinalities)
                    else:
                        r.inputs[g] = d.shape
            if r.groups:
                self.routes[e] = r
            else:
                self.dropped[e] = "no feature group routes to it"
        missing = [e for e in required if self.dropped.get(e) == "no feature group routes to it"]
        if missing:
            decl = ", ".join(f"{g} -> {list(d.experts)}" for g, d in self.groups.items()) or "(no groups)"
            raise ValueError(f"feature router: required expert(s) {missing} can never receive input: no feature group "
                             f"lists them in `experts`. Group routing: {decl}")
        if not self.routes:
            raise ValueError(f"feature router: no expert receives input (configured: {list(experts)}, "
                             f"dropped: {self.dropped})")
        self.active = list(self.routes)
        self.unused_groups = [g for g, d in self.groups.items() if not set(d.experts) & set(self.active)]


class HMMProjector(nn.Module):
    """HMM triple-mode routing (spec §4.4, G1): per mode h_m = SiLU(LN(Linear_{in->out}(x_m))).

    Rows with `present/hmm/<mode>` False (or, without that key, an all-zero `hmm/<mode>` row; or the whole
    batch when `hmm/<mode>` is absent) get the mode's learnable default embedding (zero-initialised).
    forward(batch) -> {task: [B, out_dim]} through `task_modes`; tasks not mapped use `default_mode`.
    """

    def __init__(self, modes: Sequence[str], tasks: Sequence[str], task_modes: Mapping[str, str] | None = None,
                 default_mode: str | None = None, in_dim: int = 16, out_dim: int = 32):
        super().__init__()
        self.modes, self.in_dim, self.out_dim = list(modes), in_dim, out_dim
        if not self.modes:
            raise ValueError("HMMProjector needs at least one mode")
        task_modes = dict(task_modes or {})
        bad = {t: m for t, m in task_modes.items() if m not in self.modes}
        if bad:
            raise ValueError(f"task_modes: unknown mode(s) {bad} (modes: {self.modes})")
        if default_mode is not None and default_mode not in self.modes:
            raise ValueError(f"default_mode: '{default_mode}' is not one of {self.modes}")
        unmapped = [t for t in tasks if t not in task_modes]
        if unmapped and default_mode is None:
            raise ValueError(f"tasks {unmapped} have no HMM mode and no default_mode is set (modes: {self.modes})")
        self.task_modes = {t: task_modes.get(t, default_mode) for t in tasks}
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.SiLU())
                                   for m in self.modes})
        self.default = nn.ParameterDict({m: nn.Parameter(torch.zeros(out_dim)) for m in self.modes})

    def project(self, batch: Mapping[str, Tensor], mode: str) -> Tensor:
        """One mode -> [B, out_dim]."""
        x = batch.get(f"hmm/{mode}")
        if x is None:
            return self.default[mode].expand(batch_size(batch), -1)
        present = batch.get(f"present/hmm/{mode}")
        if present is None:
            present = x.abs().sum(-1) > 0
        # Missing rows may hold NaN/garbage; zero them so they cannot poison LayerNorm statistics or grads.
        x = torch.where(present.unsqueeze(-1), x.float(), torch.zeros_like(x, dtype=torch.float32))
        return torch.where(present.unsqueeze(-1), self.proj[mode](x), self.default[mode])

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        per_mode = {m: self.project(batch, m) for m in set(self.task_modes.values())}
        return {t: per_mode[m] for t, m in self.task_modes.items()}
