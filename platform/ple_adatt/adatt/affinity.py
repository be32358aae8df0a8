"""Task affinity: EMA of per-task gradient cosine similarity (spec §7.1), exact under data parallelism.

Notation: T tasks, P flattened shared parameters, B batch rows, D representation width, R ranks.

Two sources for the per-task gradients g_i:

* ``params``: gradients of each task loss w.r.t. the shared-expert parameters, g_i in R^P.
  Ranks hold different rows, so the global-batch gradient is a count-weighted mean of the rank
  gradients; the per-task gradient vectors [T, P] are all-reduced and the cosine is taken after.
* ``representation``: gradients w.r.t. the shared representation z [B, D] (cheap: only the
  towers are traversed). The global-batch gradient is the concatenation of the rank gradients
  over rows, so the Gram matrix G G^T [T, T] is a sum over ranks and only it is all-reduced.

Both give the affinity a single process would compute over the concatenated global batch (up to
float rounding), so every rank holds the identical matrix.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

AllReduceMean = Callable[[Tensor], Tensor]


def per_task_gradients(losses: Sequence[Tensor | None], inputs: Sequence[Tensor]) -> Tensor:
    """Flattened gradient of each loss w.r.t. ``inputs``; ``None`` losses give zero rows.

    losses: T scalars (or None for a task absent on this rank). inputs: tensors that require grad.
    Returns G [T, P] with P = total numel of ``inputs``. The graph is retained because the
    training loop backpropagates the same graph afterwards.
    """
    numel = sum(t.numel() for t in inputs)
    ref = inputs[0]
    dtype = torch.promote_types(ref.dtype, torch.float32)  # fp16/bf16 inputs: measure in fp32
    grads = torch.zeros(len(losses), numel, dtype=dtype, device=ref.device)
    for i, loss in enumerate(losses):
        if loss is None or not loss.requires_grad:
            continue
        parts = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        offset = 0
        for t, g in zip(inputs, parts):
            if g is not None:  # unused inputs (an expert this task's path skips) stay zero
                grads[i, offset:offset + t.numel()] = g.reshape(-1)
            offset += t.numel()
    return grads


class TaskAffinityComputer(nn.Module):
    """EMA of the T x T cosine matrix of per-task gradients.

    Buffers (all in ``state_dict``): ``affinity`` [T, T] (identity at init), ``pair_count``
    [T, T] (observations per pair; a pair's first observation is copied, later ones are EMA'd),
    ``update_count`` [] (measurements taken).

    A task is observed in a measurement when it has labelled rows on some rank and a non-zero
    gradient (a zero gradient has no direction). Rows/columns of unobserved tasks are untouched.
    """

    def __init__(self, task_names: Sequence[str], ema_decay: float = 0.9, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if len(set(task_names)) != len(task_names) or not task_names:
            raise ValueError(f"task_names must be non-empty and unique, got {list(task_names)}")
        self.task_names = list(task_names)
        self.ema_decay = ema_decay
        self.eps = eps
        t = len(self.task_names)
        self.register_buffer("affinity", torch.eye(t))
        self.register_buffer("pair_count", torch.zeros(t, t, dtype=torch.long))
        self.register_buffer("update_count", torch.zeros((), dtype=torch.long))

    # ---- measurement -------------------------------------------------------------------------
    @torch.compiler.disable  # per-task autograd.grad with retain_graph breaks graph capture
    def update(
        self,
        losses: Mapping[str, Tensor],
        *,
        params: Sequence[Tensor] | None = None,
        representation: Tensor | Sequence[Tensor] | None = None,
        counts: Mapping[str, int | float | Tensor] | None = None,
        all_reduce_mean: AllReduceMean | None = None,
    ) -> Tensor:
        """Measure the cosine matrix on this batch and fold it into the EMA.

        losses: task -> scalar loss on this rank (non-negative weighted loss, mean over its
            labelled rows). Tasks missing from the dict are absent on this rank.
        params | representation: exactly one; the shared parameters (use the unwrapped
            module's, outside DDP) or the shared representation tensor(s) [B, ...] in the graph.
        counts: task -> labelled rows behind that task's loss on this rank. Needed for
            exactness when ranks hold different numbers of labelled rows; None weights every
            rank where the task is present equally.
        all_reduce_mean: collective mean over ranks (None: single process). Called exactly once
            per update, on every rank, whatever the local presence pattern.
        Returns the cosine matrix C [T, T] of this measurement (zero rows/cols for unobserved tasks).
        """
        if (params is None) == (representation is None):
            raise ValueError("pass exactly one of params= (parameter affinity) or representation=")
        unknown = sorted(set(losses) - set(self.task_names))
        if unknown:
            raise KeyError(f"losses has unknown tasks {unknown}; known: {self.task_names}")
        if params is not None:
            inputs = [p for p in params if p.requires_grad]
            if not inputs:
                raise ValueError("no shared parameter requires grad (frozen?); cannot measure affinity")
        else:
            inputs = [representation] if isinstance(representation, Tensor) else list(representation)
            if not all(z.requires_grad for z in inputs):
                raise ValueError("representation must be part of the autograd graph (requires_grad)")

        n = self._local_counts(losses, counts, inputs[0].device)          # [T]
        # Tasks without labelled rows here are skipped: their loss may be NaN (mean over no rows),
        # and NaN * 0 would poison the all-reduced gradient of the ranks that do have labels.
        local = [losses.get(name) if k > 0 else None for k, name in zip(n.tolist(), self.task_names)]
        grads = per_task_gradients(local, inputs)                         # [T, P] of the mean losses
        if params is not None:
            # Global gradient of task i = sum_r n_ri g_ri / N_i. The 1/N_i factor is per task and
            # cancels in the cosine, so reduce the count-weighted gradients and the counts together.
            grads.mul_(n[:, None])                                        # gradient of the *sum* loss
            packed = torch.cat([grads.reshape(-1), n])
            if all_reduce_mean is not None:
                packed = all_reduce_mean(packed)
            grads, n = packed[:-n.numel()].view_as(grads), packed[-n.numel():]
            gram = grads @ grads.T                                        # [T, T]
        else:
            # Rows are disjoint across ranks: the global gradient is the concatenation of the
            # rank gradients, so its Gram matrix is the sum of the rank Gram matrices.
            # n_i n_j scales the [T, T] Gram rather than the [T, B*D] gradients (cheaper).
            packed = torch.cat([((grads @ grads.T) * n[:, None] * n[None, :]).reshape(-1), n])
            if all_reduce_mean is not None:
                packed = all_reduce_mean(packed)
            t = n.numel()
            gram, n = packed[:-t].view(t, t), packed[-t:]
        return self._fold(gram, observed=n > 0)

    def _local_counts(self, losses, counts, device) -> Tensor:
        """[T] float: labelled rows per task on this rank (1/0 presence when counts is None)."""
        out = torch.zeros(len(self.task_names), dtype=torch.float32, device=device)
        for i, name in enumerate(self.task_names):
            loss = losses.get(name)
            if loss is None or not loss.requires_grad:
                continue
            if counts is not None and name not in counts:
                raise KeyError(f"counts has no entry for task {name!r}, which has a loss")
            out[i] = 1.0 if counts is None else float(counts[name])
        return out

    @torch.no_grad()
    def _fold(self, gram: Tensor, observed: Tensor) -> Tensor:
        """Cosine from the Gram matrix (direction only), then per-pair EMA. gram [T, T], observed [T]."""
        norm = gram.diagonal().clamp_min(0).sqrt()                        # [T]
        observed = observed & (norm > self.eps)  # NaN norm (non-finite loss) is unobserved too
        unit = torch.where(observed, 1.0 / norm.clamp_min(self.eps), torch.zeros_like(norm))
        cos = (gram * unit[:, None] * unit[None, :]).clamp(-1.0, 1.0)     # [T, T]
        pair = observed[:, None] & observed[None, :]
        first = pair & (self.pair_count == 0)
        ema = self.ema_decay * self.affinity + (1.0 - self.ema_decay) * cos.to(self.affinity.dtype)
        new = torch.where(first, cos.to(self.affinity.dtype), torch.where(pair, ema, self.affinity))
        self.affinity.copy_(new.clamp(-1.0, 1.0))
        self.pair_count += pair.long()
        self.update_count += 1
        return cos
