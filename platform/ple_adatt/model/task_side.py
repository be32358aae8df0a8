"""PLE task side: task-expert basket and logit transfer (spec §5.1, §5.2, §11.2, §11.13).

Notation: B batch, D_t width of task t's CGC output, H HMM projection width, K clusters,
C cluster-embedding width, O task-expert output width (32 in the seed).

Data flow for one batch (what the model assembly does)::

    h = basket(cgc_out, hmm=hmm_proj, cluster_probs=batch["cluster_probs"])  # task -> [B, O]
    logits = {}
    for task in transfer.order:                       # Kahn order: sources before targets
        logits[task] = towers[task](transfer(task, h[task], logits))
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple_adatt.model.gates import BlockScaled
from ple_adatt.model.layers import mlp, mlp_signature, stacked_mlp
from ple_adatt.model.towers import activate, stackable_groups


def _cluster_embedding(
    table: nn.Embedding, cluster_probs: torch.Tensor | None, cluster_ids: torch.Tensor | None
) -> torch.Tensor:
    """Soft routing e = p·E when a posterior is given, hard lookup E[id] otherwise -> [B, C]."""
    if cluster_probs is not None:
        if cluster_probs.shape[-1] != table.num_embeddings:
            raise ValueError(
                f"cluster_probs has {cluster_probs.shape[-1]} columns, the basket was built for "
                f"n_clusters={table.num_embeddings}"
            )
        return cluster_probs.to(table.weight.dtype) @ table.weight  # [B, K] x [K, C] -> [B, C]
    if cluster_ids is not None:
        return table(cluster_ids.long())
    raise ValueError("the basket has a cluster embedding: pass cluster_probs [B, K] or cluster_ids [B]")


class GroupTaskExpertBasket(nn.Module):
    """One GroupEncoder MLP per task group, shared by the group's tasks (v3.2 basket).

    Input for task t in group g: x_t = [cgc_t ‖ hmm[mode(t)] ‖ e_cluster] -> MLP_g -> [B, O].
    Tasks in a group share MLP_g and still differ because cgc_t is task-specific; the cluster
    embedding carries the cluster's input shift (spec §5.1). Widths are derived from the
    arguments: 512 + 32 + 32 = 576 -> 128 -> 64 -> 32 for the seed.

    Args:
        task_dims: task -> D_t (width of its CGC output).
        task_groups: task -> group name; every task of ``task_dims`` must have one.
        task_modes: task -> HMM mode (or None); tasks without a mode get a zero HMM slice so
            all tasks of a group keep the same input width.
        hmm_dim: H, width of each HMM projection (0 = no HMM input).
        n_clusters, cluster_dim: the K x C embedding table (n_clusters=0 = no cluster input).
        hidden_dims, out_dim: GroupEncoder widths (128, 64) and O (32).
    """

    def __init__(
        self,
        *,
        task_dims: Mapping[str, int],
        task_groups: Mapping[str, str],
        task_modes: Mapping[str, str | None] | None = None,
        hmm_dim: int = 32,
        n_clusters: int = 20,
        cluster_dim: int = 32,
        hidden_dims: Sequence[int] = (128, 64),
        out_dim: int = 32,
        dropout: float = 0.2,
    ):
        super().__init__()
        missing = sorted(set(task_dims) - set(task_groups))
        if missing:
            raise ValueError(f"tasks without a group: {missing}")
        self.task_groups = dict(task_groups)
        self.task_modes = {t: (task_modes or {}).get(t) for t in task_dims}
        self.hmm_dim = hmm_dim
        widths: dict[str, dict[str, int]] = {}
        for task, dim in task_dims.items():
            widths.setdefault(task_groups[task], {})[task] = dim
        for group, dims in widths.items():
            if len(set(dims.values())) > 1:
                raise ValueError(f"task group {group!r} shares one encoder but its tasks have different widths: {dims}")
        self.cluster_embed = nn.Embedding(n_clusters, cluster_dim) if n_clusters > 0 else None
        c = cluster_dim if n_clusters > 0 else 0
        self.encoders = nn.ModuleDict(
            {
                g: mlp(next(iter(d.values())) + hmm_dim + c, [*hidden_dims, out_dim], dropout=dropout)
                for g, d in widths.items()
            }
        )
        self.batched = True  # all tasks' encoder calls as one stacked operation; False: the reference loop

    def forward(
        self,
        task_reprs: Mapping[str, torch.Tensor],
        hmm: Mapping[str, torch.Tensor] | None = None,
        cluster_probs: torch.Tensor | None = None,
        cluster_ids: torch.Tensor | None = None,
        factored: BlockScaled | None = None,
    ) -> dict[str, torch.Tensor]:
        """task_reprs: task -> [B, D_t]; hmm: mode -> [B, H]; cluster_probs [B, K] (soft) or
        cluster_ids [B] (hard, only used when cluster_probs is None). Returns task -> [B, O].
        ``factored``: ``task_reprs`` as CGCAttention's BlockScaled (same values); when given, the
        stacked form projects the shared concat once per block instead of once per task."""
        e = None if self.cluster_embed is None else _cluster_embedding(self.cluster_embed, cluster_probs, cluster_ids)
        if self.batched and factored is not None:
            return self._factored_forward(factored, task_reprs, hmm, e)
        xs = {task: torch.cat([h, *_hmm_slice(self, task, h, hmm), *([e] if e is not None else [])], dim=-1)
              for task, h in task_reprs.items()}
        if not self.batched:
            return {task: self.encoders[self.task_groups[task]](x) for task, x in xs.items()}
        # every task's encoder call (shared within a group) stacked into one matmul per layer
        signatures = {task: _with_width(mlp_signature(self.encoders[self.task_groups[task]]), x.shape[-1])
                      for task, x in xs.items()}
        out = {}
        for tasks in stackable_groups(signatures, list(xs)):
            encoders = [self.encoders[self.task_groups[t]] for t in tasks]
            y = stacked_mlp(encoders, torch.stack([xs[t] for t in tasks]))                 # [T, B, O]
            out.update({t: y[i] for i, t in enumerate(tasks)})
        return out

    def _factored_forward(self, f: BlockScaled, task_reprs: Mapping[str, torch.Tensor],
                          hmm: Mapping[str, torch.Tensor] | None, e: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The stacked form with the first Linear factored (same math, other rounding). Task t's input
        is x_t = [c_t ‖ hmm_t ‖ e] with c_t = h scaled block-wise by a_t [B, E] (CGCAttention), so

            W1 x_t + b = Σ_i a_{t,i} (W1[:, block i] h[:, block i]) + W1_hmm hmm_t + W1_e e + b:

        the per-block projections P [B, E, H1] of h are computed once for every group's W1 (one
        matmul per block), and each task only mixes its group's P with its E weights. Dropout comes
        after the first Linear (layers.mlp), so the factoring leaves it in place."""
        d = f.h.shape[-1]
        by_group: dict[str, list[str]] = {}
        for t, x in task_reprs.items():
            if x.shape[-1] != d:
                raise ValueError(f"task {t!r}: representation width {x.shape[-1]} != factored width {d}")
            by_group.setdefault(self.task_groups[t], []).append(t)
        firsts = [self.encoders[g][0] for g in by_group]                             # nn.Linear each
        w_h = torch.cat([lin.weight[:, :d] for lin in firsts])                       # [sum H1, D]
        p = torch.stack([hb @ wb.T for hb, wb in zip(f.h.split(f.block_dims, 1), w_h.split(f.block_dims, 1))],
                        dim=1)                                                       # [B, E, sum H1]
        z, lo = {}, 0
        for lin, (g, tasks) in zip(firsts, by_group.items()):
            hi = lo + lin.out_features
            a = torch.stack([f.scales[t] for t in tasks])                            # [T_g, B, E]
            zg = torch.einsum("tbe,beh->tbh", a, p[..., lo:hi])                      # [T_g, B, H1]
            lo = hi
            rest = lin.weight[:, d:]                                                 # [H1, H + C]
            base = lin.bias if e is None else F.linear(e, rest[:, self.hmm_dim:], lin.bias)  # [B, H1] or [H1]
            hmm_part: dict[str, torch.Tensor] = {}                                   # mode -> [B, H1]
            for i, t in enumerate(tasks):
                mode = self.task_modes.get(t) if self.hmm_dim else None
                if mode is not None and mode not in hmm_part:
                    x = _hmm_slice(self, t, f.h, hmm)[0]
                    hmm_part[mode] = x @ rest[:, : self.hmm_dim].T
                zt = zg[i] if base is None else zg[i] + base
                z[t] = zt if mode is None else zt + hmm_part[mode]
        tails = {t: self.encoders[self.task_groups[t]][1:] for t in z}
        out = {}
        for tasks in stackable_groups({t: mlp_signature(m) for t, m in tails.items()}, list(z)):
            y = stacked_mlp([tails[t] for t in tasks], torch.stack([z[t] for t in tasks]))  # [T, B, O]
            out.update({t: y[i] for i, t in enumerate(tasks)})
        return {t: out[t] for t in task_reprs}


def _with_width(signature: tuple | None, width: int) -> tuple | None:
    return None if signature is None else (*signature, ("input", width))


def _hmm_slice(
    basket: nn.Module, task: str, h: torch.Tensor, hmm: Mapping[str, torch.Tensor] | None
) -> list[torch.Tensor]:
    """The task's HMM projection [B, H] as a list (empty when the basket has no HMM input)."""
    if basket.hmm_dim == 0:
        return []
    mode = basket.task_modes.get(task)
    if mode is None:  # zero slice keeps the group's input width; the encoder learns to ignore it
        return [h.new_zeros(h.shape[0], basket.hmm_dim)]
    if hmm is None or mode not in hmm:
        raise ValueError(f"task {task!r} reads HMM mode {mode!r}, but hmm has {sorted(hmm or {})}")
    return [hmm[mode]]


class ClusterTaskExpertBasket(nn.Module):
    """Legacy basket: one MLP per (task × cluster) pair, kept to measure the v3.2 saving.

    x_t = [cgc_t ‖ hmm[mode(t)]] -> MLP_{t,c} -> [B, O]; the output is the posterior-weighted
    mix Σ_c p_c MLP_{t,c}(x_t) (soft) or MLP_{t,id}(x_t) (hard). Same arguments as
    GroupTaskExpertBasket; ``task_groups`` and ``cluster_dim`` are accepted and unused (no
    sharing, no embedding), so ``task_basket`` can swap the two.
    """

    def __init__(
        self,
        *,
        task_dims: Mapping[str, int],
        task_groups: Mapping[str, str] | None = None,
        task_modes: Mapping[str, str | None] | None = None,
        hmm_dim: int = 32,
        n_clusters: int = 20,
        cluster_dim: int = 32,
        hidden_dims: Sequence[int] = (128, 64),
        out_dim: int = 32,
        dropout: float = 0.2,
    ):
        super().__init__()
        if n_clusters < 1:
            raise ValueError("ClusterTaskExpertBasket needs n_clusters >= 1")
        self.task_modes = {t: (task_modes or {}).get(t) for t in task_dims}
        self.hmm_dim = hmm_dim
        self.n_clusters = n_clusters
        self.experts = nn.ModuleDict(
            {
                t: nn.ModuleList(mlp(d + hmm_dim, [*hidden_dims, out_dim], dropout=dropout) for _ in range(n_clusters))
                for t, d in task_dims.items()
            }
        )

    def forward(
        self,
        task_reprs: Mapping[str, torch.Tensor],
        hmm: Mapping[str, torch.Tensor] | None = None,
        cluster_probs: torch.Tensor | None = None,
        cluster_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Same contract as GroupTaskExpertBasket.forward."""
        if cluster_probs is None:
            if cluster_ids is None:
                raise ValueError("the legacy basket needs cluster_probs [B, K] or cluster_ids [B]")
            cluster_probs = nn.functional.one_hot(cluster_ids.long(), self.n_clusters).float()
        out = {}
        for task, h in task_reprs.items():
            x = torch.cat([h, *_hmm_slice(self, task, h, hmm)], dim=-1)
            ys = torch.stack([mlp(x) for mlp in self.experts[task]], dim=1)  # [B, K, O]
            out[task] = torch.einsum("bk,bko->bo", cluster_probs.to(ys.dtype), ys)
        return out


def task_basket(per_cluster: bool = False, **kwargs) -> nn.Module:
    """Build the v3.2 group basket, or the legacy per-(task × cluster) one when ``per_cluster``."""
    return ClusterTaskExpertBasket(**kwargs) if per_cluster else GroupTaskExpertBasket(**kwargs)


def kahn_order(tasks: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """Topological order of ``tasks`` under ``edges`` (source, target), Kahn's algorithm.

    Ties are broken by position in ``tasks`` (deterministic; no edges -> ``tasks`` unchanged).
    Raises ValueError naming one cycle, e.g. "a -> b -> a".
    """
    index = {t: i for i, t in enumerate(tasks)}
    unknown = sorted({n for e in edges for n in e} - set(index))
    if unknown:
        raise ValueError(f"logit-transfer edges name unknown tasks {unknown}; tasks: {list(tasks)}")
    succ: dict[str, list[str]] = {t: [] for t in tasks}
    indeg = dict.fromkeys(tasks, 0)
    for s, t in edges:
        succ[s].append(t)
        indeg[t] += 1
    heap = [index[t] for t in tasks if indeg[t] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        task = tasks[heapq.heappop(heap)]
        order.append(task)
        for t in succ[task]:
            indeg[t] -= 1
            if indeg[t] == 0:
                heapq.heappush(heap, index[t])
    if len(order) < len(tasks):
        raise ValueError(f"logit-transfer edges form a cycle: {' -> '.join(_find_cycle(tasks, edges, set(order)))}")
    return order


def _find_cycle(tasks: Sequence[str], edges: Sequence[tuple[str, str]], done: set[str]) -> list[str]:
    """A cycle among the tasks Kahn could not order, as [a, b, ..., a] along edge direction."""
    # Every leftover task has a leftover predecessor, so walking predecessors must revisit one.
    pred = {t: s for s, t in edges if s not in done and t not in done}
    node = min((t for t in pred), key=tasks.index)
    seen: list[str] = []
    while node not in seen:
        seen.append(node)
        node = pred[node]
    cycle = seen[seen.index(node):][::-1]  # walked backwards; reverse to follow the edges
    start = cycle.index(min(cycle, key=tasks.index))  # report from the earliest-declared task
    cycle = cycle[start:] + cycle[:start]
    return [*cycle, cycle[0]]


class LogitTransfer(nn.Module):
    """Residual logit transfer along a DAG (spec §5.2): h_t <- h_t + Σ_s α·SiLU(LN(Linear(ŷ_s))).

    ŷ_s is the source's prediction after its output activation (``towers.activate``). With
    ``detach_source`` the target cannot pull on the source tower (spec §11.13).

    Args:
        tasks: all task names, in config order; ``order`` is a permutation of them.
        task_types: task -> binary | multiclass | regression | contrastive (for the activation).
        out_dims: task -> width of ŷ (1 for binary/regression, C otherwise).
        edges: (source, target, alpha) triples.
        hidden_dim: width of the task-expert output h_t (32).

    Use: ``for t in transfer.order: logits[t] = tower[t](transfer(t, h[t], logits))``.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        task_types: Mapping[str, str],
        out_dims: Mapping[str, int],
        edges: Sequence[tuple[str, str, float]],
        hidden_dim: int = 32,
        detach_source: bool = False,
    ):
        super().__init__()
        self.order = kahn_order(list(tasks), [(s, t) for s, t, _ in edges])
        self.task_types = dict(task_types)
        self.detach_source = detach_source
        self.sources: dict[str, list[tuple[str, float]]] = {t: [] for t in tasks}
        for s, t, alpha in edges:
            self.sources[t].append((s, float(alpha)))
        # ModuleDict keys may not contain "."; "src__tgt" is unambiguous for task names.
        self.proj = nn.ModuleDict(
            {
                f"{s}__{t}": nn.Sequential(nn.Linear(out_dims[s], hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU())
                for s, t, _ in edges
            }
        )

    def forward(self, task: str, h: torch.Tensor, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """h [B, hidden_dim] for ``task``; logits: the sources' tower outputs computed so far.
        Returns h plus the transfer residuals [B, hidden_dim] (h itself if ``task`` has no sources)."""
        for s, alpha in self.sources[task]:
            if s not in logits:
                raise KeyError(f"transfer {s} -> {task}: logits of {s!r} missing; iterate tasks in transfer.order")
            y = activate(self.task_types[s], logits[s])
            y = y.unsqueeze(-1) if y.dim() == 1 else y  # [B] -> [B, 1]
            if self.detach_source:
                y = y.detach()
            h = h + alpha * self.proj[f"{s}__{task}"](y)
        return h
