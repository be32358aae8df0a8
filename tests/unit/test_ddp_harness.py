"""Two gloo ranks through the real per-worker step and the trainable-set mechanism (no Ray)."""
from __future__ import annotations

import pytest
import torch

from ddp_harness import in_sync, run_ranks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add sync overhead

ADATT_TWO_PHASE = ["model.arch=ple_hetero", "model.experts.use=[mlp]", "adatt.enabled=true",
                   "adatt.grad_interval=1", "train.epochs=3", "two_phase.enabled=true", "two_phase.phase2_epochs=1"]


def test_adatt_phases_and_phase_two_run_on_two_ranks_in_sync(tiny_dataset):
    """Issue 14: the CGC freeze at adaTT's frozen phase used to toggle requires_grad under a live DDP
    wrapper ("Expected to have finished reduction in the prior iteration") on 2 ranks."""
    ranks = run_ranks(ADATT_TWO_PHASE, tiny_dataset)
    r0, r1 = ranks
    assert r0["phase"] == [1, 1, 1, 2]
    assert r0["adatt_phase"] == ["WARMUP", "DYNAMIC", "FROZEN", "OFF"]
    assert r0["frozen"][:2] == [[], []]
    assert r0["frozen"][2] == ["shared.attention.bias", "shared.attention.weight"]  # CGC freezes with adaTT
    assert set(r0["frozen"][2]) < set(r0["frozen"][3]) and any(n.startswith("shared.experts.") for n in r0["frozen"][3])
    assert r0["frozen"] == r1["frozen"] and r0["skipped"] == r1["skipped"] == 0
    assert in_sync(ranks) == [True] * 4
    assert not torch.equal(r0["state"][2], r0["state"][3])  # phase 2 still trains (towers)


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_weightings_with_parameters_or_collectives_stay_in_sync(tiny_dataset, weighting):
    ranks = run_ranks([f"loss_weighting.name={weighting}", "adatt.enabled=true", "adatt.grad_interval=1",
                       "train.epochs=3"], tiny_dataset, steps_per_epoch=1)
    assert ranks[0]["adatt_phase"] == ["WARMUP", "DYNAMIC", "FROZEN"]
    assert all(in_sync(ranks))


@pytest.mark.parametrize("overrides", [
    ["model.arch=ple_hetero", "model.experts.use=[mlp]", "model.gate.kind=layer", "two_phase.enabled=true",
     "two_phase.phase2_epochs=1"],
    ["model.arch=ple_hetero", "model.experts.use=[mlp]", "model.gate.kind=both", "two_phase.enabled=true",
     "two_phase.phase2_epochs=1"],
    ["model.arch=mmoe"],
    ["model.arch=shared_bottom", "loss_weighting.name=dwa"],
    ["model.arch=adatt_fusion", "model.num_levels=2", "model.sae.enabled=true", "model.evidential.enabled=true"],
], ids=["hetero-layer-gate", "hetero-both-gates", "mmoe", "shared_bottom-dwa", "adatt_fusion-sae-evidential"])
def test_other_models_through_every_adatt_phase_stay_in_sync(tiny_dataset, overrides):
    ranks = run_ranks(["adatt.enabled=true", "adatt.grad_interval=1", "train.epochs=3", *overrides], tiny_dataset,
                      steps_per_epoch=1)
    assert ranks[0]["adatt_phase"][:3] == ["WARMUP", "DYNAMIC", "FROZEN"]
    assert ranks[0]["frozen"] == ranks[1]["frozen"]
    assert all(in_sync(ranks))
