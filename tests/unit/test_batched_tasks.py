"""Per-task computations run stacked (model/layers.stacked_mlp, model/towers.stacked_towers, the group
basket, HeteroPLE's towers by DAG level): the same outputs and gradients as the per-task loop for the
same weights, per-task dropout still independent, the same parameters."""
from __future__ import annotations

import copy

import pyarrow.dataset as pads
import torch

from ple_adatt.model.assembly import transfer_levels
from ple_adatt.model.layers import mlp, set_batched, stacked_mlp
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


def test_default_model_batched_equals_looped(synthetic_dataset):
    """configs/experiments/synthetic_ple.yaml (16 tasks, basket, logit-transfer DAG): eval outputs of
    the stacked forms equal the per-task loop's (atol 1e-6), gradients too, parameters unchanged."""
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
    runs = {}
    for batched in (False, True):
        assert set_batched(model, batched) == 2  # towers + basket
        model.zero_grad()
        out = model(batch)
        sum((v.float() ** 2).mean() for v in out.values()).backward()
        runs[batched] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loop, loop_g), (stacked, stacked_g) = runs[False], runs[True]
    assert loop.keys() == stacked.keys() and len(loop) == 16
    for t in loop:
        torch.testing.assert_close(stacked[t], loop[t], atol=1e-6, rtol=0)
    assert loop_g.keys() == stacked_g.keys()
    for n in loop_g:
        torch.testing.assert_close(stacked_g[n], loop_g[n], atol=1e-5, rtol=1e-4)
    assert list(model.state_dict()) == keys
