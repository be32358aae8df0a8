"""Total-loss aggregation in the seed's order (spec §6.5):

    weighted task losses (+ weighting regulariser) -> [evidential aux] -> [adaTT transfer]
    -> CGC entropy -> causal DAG penalty -> SAE × sae_weight

The weighting regulariser (Σ w_k s_k for uncertainty weighting) is added outside the adaTT
hook so adaTT only sees non-negative weighted losses (spec §11.6).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

# weighted -> enhanced (same keys), or -> (enhanced, diagnostics) like AdaTT.transfer_losses.
TransferHook = Callable[[dict[str, torch.Tensor]], "dict[str, torch.Tensor] | tuple[dict, dict]"]


def aggregate_losses(
    weighted: Mapping[str, torch.Tensor],
    extra: torch.Tensor,
    *,
    transfer: TransferHook | None = None,
    evidential: torch.Tensor | None = None,
    cgc_entropy: torch.Tensor | None = None,
    dag: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    sae: torch.Tensor | None = None,
    sae_weight: float = 0.01,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum every term of the training loss and return it with a per-term log.

    Args:
        weighted: task -> scalar weighted loss, from the weighting strategy (present tasks only).
        extra: scalar regulariser from the weighting strategy (0 unless uncertainty).
        transfer: adaTT hook, weighted dict -> enhanced dict with the same keys (L_k + T_k), or
            (enhanced, diagnostics) where diagnostics (name -> 0-dim tensor) are logged as-is,
            e.g. ``lambda w: adatt.transfer_losses(w, present)``.
        evidential: evidential auxiliary loss, already weighted.
        cgc_entropy, dag: regularisers already scaled by their own λ (λ_ent, λ_dag, ...), as
            returned by the gate and the causal expert; None when inactive. ``dag`` may be the
            causal expert's dict of terms ({'dag', 'sparse', 'rec'}), logged as ``dag/<name>``.
        sae: raw SAE loss; multiplied here by ``sae_weight`` (0.01, spec §6.7).

    Returns:
        (total, terms): total is a 0-dim tensor carrying the graph; terms maps names to detached
        0-dim tensors: ``task/<name>`` (weighted), ``transfer/<name>`` (adaTT addition),
        ``weighting_reg``, ``evidential``, ``cgc_entropy``, ``dag``, ``sae`` (scaled), the hook's
        diagnostics, ``total``.
    """
    enhanced, diagnostics = dict(weighted), {}
    if transfer is not None and enhanced:
        enhanced = transfer(dict(weighted))
        if isinstance(enhanced, tuple):
            enhanced, diagnostics = enhanced
        if set(enhanced) != set(weighted):
            raise ValueError(f"adaTT hook changed the task set: got {sorted(enhanced)}, expected {sorted(weighted)}")
    terms: dict[str, torch.Tensor] = {f"task/{t}": v for t, v in weighted.items()}
    if transfer is not None:
        terms |= {f"transfer/{t}": enhanced[t] - weighted[t] for t in weighted}
    total = extra + sum(enhanced.values(), extra.new_zeros(()))
    terms["weighting_reg"] = extra
    if isinstance(dag, Mapping):
        terms |= {f"dag/{k}": v for k, v in dag.items()}
        dag = sum(dag.values(), extra.new_zeros(()))
    for name, value, scale in (
        ("evidential", evidential, 1.0),
        ("cgc_entropy", cgc_entropy, 1.0),
        ("dag", dag, 1.0),
        ("sae", sae, sae_weight),
    ):
        if value is not None:
            terms[name] = scale * value
            total = total + terms[name]
    terms |= diagnostics
    terms["total"] = total
    return total, {k: v.detach() for k, v in terms.items()}
