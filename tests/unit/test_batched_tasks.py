"""Per-task computations run stacked (model/layers.stacked_mlp, model/towers.stacked_towers, the group
basket with its first layer factored over CGCAttention's blocks, HeteroPLE's towers by DAG level): the
same outputs and gradients as the per-task loop for the same weights, per-task dropout still
independent, the same parameters."""
from __future__ import annotations

import copy

import pyarrow.dataset as pads
import pytest
import torch

from ple_adatt.model.assembly import transfer_levels
from ple_adatt.model.gates import CGCAttention
from ple_adatt.model.layers import mlp, set_batched, stacked_mlp
from ple_adatt.model.task_side import GroupTaskExpertBasket
from ple_adatt.model.towers import TaskTower, stacked_towers


def test_stacked_mlp_matches_the_loop_with_gradients():
    torch.manual_seed(0)
    seqs = [mlp(12, [16, 8], dropout=0.3) for _ in range(3)]
    seqs.append(seqs[0])  # a module listed twice (a basket encoder shared by a group's tasks)
    x = torch.randn(4, 32, 12)
    for s in seqs:
        s.eval()
    loop = torch.stack([s(x[i]) for i, s in enumerate(seqs)])
    (loop ** 2).sum().backward()
    loop_grads = [p.grad.clone() for s in seqs[:3] for p in s.parameters()]
    for s in seqs:
        s.zero_grad()
    stacked = stacked_mlp(seqs, x)
    (stacked ** 2).sum().backward()
    torch.testing.assert_close(stacked, loop, atol=1e-6, rtol=0)
    for g, p in zip(loop_grads, (p for s in seqs[:3] for p in s.parameters())):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)


def test_stacked_towers_pad_heads_and_keep_dropout_independent_per_task():
    torch.manual_seed(0)
    towers = [TaskTower(10, 1, [16], dropout=0.5), TaskTower(10, 5, [16], dropout=0.5)]
    towers.append(copy.deepcopy(towers[0]))  # same weights as tower 0
    x = torch.randn(64, 10)
    for t in towers:
        t.eval()
    out = stacked_towers(towers, [x, x, x])
    assert out[0].shape == (64,) and out[1].shape == (64, 5)
    for o, t in zip(out, towers):
        torch.testing.assert_close(o, t(x), atol=1e-6, rtol=0)
    for t in towers:
        t.train()
    out = stacked_towers(towers, [x, x, x])  # towers 0 and 2 differ only by their dropout masks
    assert not torch.equal(out[0], out[2])
    assert not torch.equal(out[0], towers[0].eval()(x))


def test_transfer_levels_follow_the_dag():
    order = ["ctr", "cvr", "ltv", "churn", "retention", "nba"]
    sources = {"cvr": [("ctr", 0.5)], "ltv": [("cvr", 0.5)], "retention": [("churn", 0.5)]}
    assert transfer_levels(order, sources) == [["ctr", "churn", "nba"], ["cvr", "retention"], ["ltv"]]
    assert transfer_levels(order, {}) == [order]


# The seed's 16 tasks in their 4 groups, and one task per group; HMM modes by group, one task without.
SEED_GROUPS = {
    "engagement": ["ctr", "cvr", "engagement"], "lifecycle": ["churn", "retention", "life_stage", "ltv"],
    "value": ["balance_util", "channel", "timing"],
    "consumption": ["nba", "spending_category", "consumption_cycle", "spending_bucket", "merchant_affinity",
                    "brand_prediction"],
}
SEED_MODES = {"engagement": "journey", "lifecycle": "lifecycle", "value": "behavior", "consumption": "behavior"}


@pytest.mark.parametrize("grouping", ["seed", "one_task_per_group"])
def test_factored_basket_equals_the_loop_in_float64(grouping, one_thread):
    """CGCAttention -> GroupTaskExpertBasket at the seed's widths (7 blocks, D = 512, 576 -> 128 -> 64 ->
    32): the stacked form with the factored first layer gives the looped form's outputs and gradients
    (basket, gate weights, shared concat) to float64 rounding, for the whole loss and one task's loss."""
    torch.manual_seed(0)
    groups = {t: g for g, ts in SEED_GROUPS.items() for t in ts}
    modes = {t: SEED_MODES[g] for t, g in groups.items()}
    if grouping == "one_task_per_group":
        groups = {t: t for t in groups}
    modes["merchant_affinity"] = None  # a task without an HMM mode reads a zero slice
    tasks, dims = list(groups), [64, 64, 128, 64, 64, 64, 64]
    gate = CGCAttention(dims, tasks).double()
    with torch.no_grad():
        gate.weight.normal_(0, 0.1)  # not the zero init: the gate must vary by row and task
    basket = GroupTaskExpertBasket(task_dims=dict.fromkeys(tasks, 512), task_groups=groups, task_modes=modes,
                                   dropout=0.5).double().eval()
    h = torch.randn(16, 512, dtype=torch.float64, requires_grad=True)
    hmm = {m: torch.randn(16, 32, dtype=torch.float64) for m in set(SEED_MODES.values())}
    probs = torch.softmax(torch.randn(16, 20, dtype=torch.float64), -1)
    params = [h, gate.weight, gate.bias, *basket.parameters()]
    runs = {}
    for form in ("looped", "factored"):
        basket.batched = form == "factored"
        f = gate.factored(h)
        out = basket(f.expand(), hmm, cluster_probs=probs, factored=f)
        total = sum((o ** 2).mean() for o in out.values())
        one = torch.autograd.grad((out["cvr"] ** 2).mean(), params, retain_graph=True, allow_unused=True)
        runs[form] = out, torch.autograd.grad(total, params), one
    (loop, loop_g, loop_one), (fact, fact_g, fact_one) = runs["looped"], runs["factored"]
    assert list(fact) == tasks
    for t in tasks:
        torch.testing.assert_close(fact[t], loop[t], atol=1e-12, rtol=1e-12)
    for a, b in zip(fact_g, loop_g):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(fact_one, loop_one):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert loop_one[1][tasks.index("cvr")].any() and not loop_one[1][tasks.index("ctr")].any()


def test_default_model_batched_equals_looped(synthetic_dataset, monkeypatch):
    """configs/experiments/synthetic_ple.yaml (16 tasks, basket, logit-transfer DAG): eval outputs of
    the stacked forms (the basket's first layer factored) equal the per-task loop's to float32 rounding,
    gradients too, parameters unchanged."""
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.files import split_files
    from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
    from ple_adatt.launch.inference import to_tensors
    from ple_adatt.train.build import build_model

    cfg = load_config("configs/experiments/synthetic_ple.yaml", [f"dataset={synthetic_dataset}"])
    state = fit_preprocessing(cfg.dataset)
    table = pads.dataset(split_files(cfg.dataset, "train"), format="parquet").head(16)
    batch = to_tensors(Packer(cfg.dataset, state, cfg.task_names())(table))
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k).eval()
    keys = list(model.state_dict())
    factored = []
    forward = model.basket._factored_forward
    monkeypatch.setattr(model.basket, "_factored_forward", lambda *a: factored.append(1) or forward(*a))
    runs = {}
    for batched in (False, True):
        assert set_batched(model, batched) == 2  # towers + basket
        model.zero_grad()
        out = model(batch)
        sum((v.float() ** 2).mean() for v in out.values()).backward()
        runs[batched] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loop, loop_g), (stacked, stacked_g) = runs[False], runs[True]
    assert loop.keys() == stacked.keys() and len(loop) == 16 and factored == [1]
    for t in loop:
        torch.testing.assert_close(stacked[t], loop[t], atol=1e-5, rtol=1e-5)
    assert loop_g.keys() == stacked_g.keys()
    for n in loop_g:
        torch.testing.assert_close(stacked_g[n], loop_g[n], atol=1e-5, rtol=1e-4)
    assert list(model.state_dict()) == keys
