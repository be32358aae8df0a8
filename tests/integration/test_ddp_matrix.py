"""Two gloo ranks through the real per-worker step (tests/ddp_harness.py, no Ray): the issue-14
coverage matrix, and kill-and-resume inside every training phase.

The matrix is pairwise over architecture x weighting x adaTT x two-phase x gate kind (every pair of
values that can go together appears in at least one run; the full product is 83 runs). Each run
trains 3 phase-1 epochs (adaTT: warmup, dynamic, frozen with grad_interval 1) plus one phase-2
epoch where two-phase is on, and must end with both ranks bit-identical after every epoch.
"""
from __future__ import annotations

import itertools

import pytest

from ddp_harness import in_sync, run_ranks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

FACTORS = {  # dict literal: what the matrix varies (values as config overrides)
    "arch": ["shared_bottom", "mmoe", "ple", "ple_hetero", "single_task", "adatt_fusion"],
    "weighting": ["fixed", "uncertainty", "gradnorm", "dwa"],
    "adatt": [False, True],
    "two_phase": [False, True],
    "gate": ["attention", "layer", "both"],
}
HETERO_ONLY = {"two_phase": False, "gate": "attention"}  # the only value other archs can take


def legal(combo: dict) -> bool:
    """The schema's rules: two-phase and gate kinds are ple_hetero's; single_task has no shared
    parameters for GradNorm or adaTT to measure."""
    if combo["arch"] != "ple_hetero" and any(combo[k] != v for k, v in HETERO_ONLY.items()):
        return False
    return not (combo["arch"] == "single_task" and (combo["weighting"] == "gradnorm" or combo["adatt"]))


def pairwise() -> list[dict]:
    """Greedy all-pairs cover: repeatedly take the legal combination covering most uncovered pairs."""
    keys = list(FACTORS)
    combos = [c for c in (dict(zip(keys, v)) for v in itertools.product(*FACTORS.values())) if legal(c)]
    pairs = lambda c: {((a, c[a]), (b, c[b])) for a, b in itertools.combinations(keys, 2)}  # noqa: E731
    todo, chosen = set().union(*(pairs(c) for c in combos)), []
    while todo:
        best = max(combos, key=lambda c: len(pairs(c) & todo))
        chosen.append(best)
        todo -= pairs(best)
    return chosen


def overrides(c: dict) -> list[str]:
    out = [f"model.arch={c['arch']}", f"loss_weighting.name={c['weighting']}", "train.epochs=3"]
    if c["arch"] == "ple_hetero":
        out += ["model.experts.use=[mlp]", f"model.gate.kind={c['gate']}"]
    if c["adatt"]:
        out += ["adatt.enabled=true", "adatt.grad_interval=1"]
    if c["two_phase"]:
        out += ["two_phase.enabled=true", "two_phase.phase2_epochs=1"]
    return out


MATRIX = pairwise()


def _id(c: dict) -> str:
    return "-".join([c["arch"], c["weighting"], "adatt" if c["adatt"] else "noadatt"]
                    + ([c["gate"], "2phase" if c["two_phase"] else "1phase"] if c["arch"] == "ple_hetero" else []))


def test_matrix_is_pairwise_and_legal():
    keys = list(FACTORS)
    legal_pairs = {((a, c[a]), (b, c[b])) for c in (dict(zip(keys, v)) for v in itertools.product(*FACTORS.values()))
                   if legal(c) for a, b in itertools.combinations(keys, 2)}
    covered = {((a, c[a]), (b, c[b])) for c in MATRIX for a, b in itertools.combinations(keys, 2)}
    assert covered == legal_pairs and all(legal(c) for c in MATRIX)
    print(f"\n2-rank matrix: {len(MATRIX)} runs cover all {len(legal_pairs)} legal pairs:\n  "
          + "\n  ".join(_id(c) for c in MATRIX))


@pytest.mark.parametrize("combo", MATRIX, ids=_id)
def test_two_ranks_run_every_phase_in_sync(tiny_dataset, combo):
    ranks = run_ranks(overrides(combo), tiny_dataset, steps_per_epoch=1)
    r0 = ranks[0]
    assert r0["phase"] == [1, 1, 1] + ([2] if combo["two_phase"] else [])
    if combo["adatt"]:
        assert r0["adatt_phase"][:3] == ["WARMUP", "DYNAMIC", "FROZEN"]
    assert r0["frozen"] == ranks[1]["frozen"] and r0["skipped"] == ranks[1]["skipped"] == 0
    assert all(in_sync(ranks))


# adaTT: warmup e0, dynamic e1-e2, frozen e3-e4; phase 2: e5-e6. A kill after e1, e3 and e5 restarts
# inside the dynamic, the frozen and the phase-2 phase, from a checkpoint written in that phase.
RESUMED = ["model.arch=ple_hetero", "model.experts.use=[mlp]", "adatt.enabled=true", "adatt.grad_interval=1",
           "adatt.warmup_fraction=0.2", "adatt.freeze_fraction=0.6", "train.epochs=5", "two_phase.enabled=true",
           "two_phase.phase2_epochs=2", "loss_weighting.name=uncertainty", "model.logit_transfer.enabled=true",
           "model.logit_transfer.edges=[{source: click, target: value}]"]


def test_kill_and_resume_inside_every_phase_is_exact_on_two_ranks(tiny_dataset, tmp_path):
    clean = run_ranks(RESUMED, tiny_dataset)
    assert clean[0]["adatt_phase"] == ["WARMUP", "DYNAMIC", "DYNAMIC", "FROZEN", "FROZEN", "OFF", "OFF"]
    worst = {}
    for kill_after, phase in [(1, "adaTT dynamic"), (3, "adaTT frozen"), (5, "phase 2")]:
        folder = tmp_path / f"kill{kill_after}"
        killed = run_ranks(RESUMED, tiny_dataset, checkpoints=str(folder), stop_after=kill_after)
        assert len(killed[0]["state"]) == kill_after + 1
        resumed = run_ranks(RESUMED, tiny_dataset, resume=str(folder / f"epoch_{kill_after:04d}"))
        assert all(in_sync(resumed))
        assert resumed[0]["phase"] == clean[0]["phase"][kill_after + 1:]
        assert resumed[0]["frozen"] == clean[0]["frozen"][kill_after + 1:]
        worst[phase] = max(float((a - b).abs().max()) for a, b in zip(resumed[0]["state"], clean[0]["state"][kill_after + 1:]))
    print(f"\nmax |parameter difference| resumed vs uninterrupted, 2 ranks: {worst}")
    assert max(worst.values()) <= 1e-6, worst
