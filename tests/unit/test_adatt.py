"""adaTT: affinity (cosine/EMA, multi-rank exactness), prior, masking, clamp, schedule, state."""
from __future__ import annotations

import copy
import gc
import math
import os
import socket
import tempfile
import threading
import time

import pytest
import torch

from ple_adatt.adatt import (AdaTT, AdaTTSchedule, Phase, TaskAffinityComputer, group_prior,
                             resolve_schedule, transfer_enhanced_losses, transfer_weights)
from ple_adatt.adatt.diagnostics import negative_transfer_pairs, save_heatmap, transfer_entropy
from ple_adatt.adatt.two_phase import freeze_parameters, prefix_predicate, trainable_parameters
from toy_multitask import ToyMultiTask, masked_losses, toy_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add sync overhead


def linear_losses(vectors: dict[str, list[float]]):
    """Shared p [3]; L_t = <p, v_t> + 5 (non-negative near p=0), so grad_p L_t = v_t exactly."""
    p = torch.zeros(3, requires_grad=True)
    return p, {t: p @ torch.tensor(v) + 5.0 for t, v in vectors.items()}


def cos(u, v):
    u, v = torch.tensor(u), torch.tensor(v)
    return float(u @ v / (u.norm() * v.norm()))


# ---- affinity ------------------------------------------------------------------------------
def test_cosine_and_ema_match_hand_values():
    comp = TaskAffinityComputer(["a", "b", "c"], ema_decay=0.9)
    u1, v1 = [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]
    p, losses = linear_losses({"a": u1, "b": v1})                      # c absent in the 1st batch
    comp.update(losses, params=[p])
    A = comp.affinity
    assert A[0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)  # first observation copied
    assert A[0, 2].item() == 0 and A[2, 2].item() == 1                 # c untouched (identity init)

    u2, v2, w2 = [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [3.0, 4.0, 0.0]
    p, losses = linear_losses({"a": u2, "b": v2, "c": w2})
    comp.update(losses, params=[p])
    expect_ab = 0.9 * (1 / math.sqrt(2)) + 0.1 * cos(u2, v2)
    assert A[0, 1].item() == pytest.approx(expect_ab, abs=1e-6)
    assert A[1, 0].item() == pytest.approx(expect_ab, abs=1e-6)
    assert A[0, 2].item() == pytest.approx(cos(u2, w2), abs=1e-6)      # pair (a, c): first seen, copied
    assert A[1, 2].item() == pytest.approx(cos(v2, w2), abs=1e-6)
    assert torch.allclose(A.diagonal(), torch.ones(3))
    assert comp.update_count.item() == 2
    assert comp.pair_count.tolist() == [[2, 2, 1], [2, 2, 1], [1, 1, 1]]

    # a zero gradient has no direction: task b is treated as unobserved
    p, losses = linear_losses({"a": [1.0, 0.0, 0.0], "b": [0.0, 0.0, 0.0]})
    before = A.clone()
    comp.update(losses, params=[p])
    assert torch.equal(A[1], before[1]) and torch.equal(A[:, 1], before[:, 1])
    assert A.min() >= -1 and A.max() <= 1


@pytest.mark.parametrize("mode", ["params", "representation"])
def test_orthogonal_gradients_give_zero_and_identical_give_one(mode):
    torch.manual_seed(0)
    z_in = torch.randn(8, 4)
    layer = torch.nn.Linear(4, 2)
    adatt = AdaTT(["x", "y"], grad_interval=1, warmup_epochs=0, freeze_epoch=1)
    adatt.on_epoch_start(0, 2)

    def run(loss_fn):
        z = layer(z_in)                                                # [B, 2]
        losses = loss_fn(z)
        where = dict(params=list(layer.parameters())) if mode == "params" else dict(representation=z)
        adatt.affinity_computer.pair_count.zero_()                    # fresh observation each case
        assert adatt.maybe_update_affinity(0, losses, **where)
        return adatt.affinity[0, 1].item()

    # column 0 vs column 1 of the output: disjoint weight rows and disjoint representation columns
    assert run(lambda z: {"x": z[:, 0].pow(2).mean(), "y": z[:, 1].pow(2).mean()}) == pytest.approx(0.0, abs=1e-6)
    # same loss scaled by 3: same direction
    assert run(lambda z: {"x": z.pow(2).mean(), "y": 3 * z.pow(2).mean()}) == pytest.approx(1.0, abs=1e-6)
    # opposite direction is -1 (before clamp, and within it)
    assert run(lambda z: {"x": z.sum() + 100, "y": 100 - z.sum()}) == pytest.approx(-1.0, abs=1e-6)


def test_nan_losses_of_unlabelled_or_broken_tasks_do_not_poison_the_affinity():
    comp = TaskAffinityComputer(["a", "b", "c"])
    p, losses = linear_losses({"a": [1.0, 0, 0], "b": [1.0, 1.0, 0]})
    losses["c"] = p.sum() * float("nan")                               # mean over zero labelled rows
    sent = []                                                          # what this rank would all-reduce
    comp.update(losses, params=[p], counts={"a": 3, "b": 2, "c": 0}, all_reduce_mean=lambda t: sent.append(t) or t)
    assert torch.isfinite(sent[0]).all() and torch.isfinite(comp.affinity).all()
    assert comp.affinity[0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    p, losses = linear_losses({"a": [1.0, 0, 0], "b": [0, 1.0, 0]})
    losses["b"] = losses["b"] * float("nan")                           # a non-finite batch, labelled
    comp.update(losses, params=[p], counts={"a": 3, "b": 2})
    assert torch.isfinite(comp.affinity).all() and comp.pair_count[0, 1] == 1


def test_update_argument_errors():
    comp = TaskAffinityComputer(["a", "b"])
    p, losses = linear_losses({"a": [1.0, 0, 0], "b": [0, 1.0, 0]})
    with pytest.raises(ValueError, match="exactly one"):
        comp.update(losses)
    with pytest.raises(KeyError, match="unknown tasks"):
        comp.update({"zz": losses["a"]}, params=[p])
    with pytest.raises(ValueError, match="requires grad"):
        comp.update(losses, params=[torch.zeros(3)])
    with pytest.raises(KeyError, match="counts has no entry for task 'b'"):
        comp.update(losses, params=[p], counts={"a": 4})


# ---- multi-rank exactness ------------------------------------------------------------------
def _global_batch(seed=0, batch=24, n_tasks=3):
    x, labels, masks = toy_batch(n_tasks, batch, in_dim=64, seed=seed, label_rate=0.6)
    masks["task02"][:batch // 2] = False       # task02 has no label on rank 0 at all
    return x, labels, masks


def _affinity_on(model, rows, x, labels, masks, mode, comp, all_reduce_mean, use_counts=True):
    logits, z = model(x[rows])
    losses, counts = masked_losses(logits, {k: v[rows] for k, v in labels.items()},
                                   {k: v[rows] for k, v in masks.items()})
    where = dict(params=list(model.shared_experts.parameters())) if mode == "params" else dict(representation=z)
    comp.update(losses, counts=counts if use_counts else None, all_reduce_mean=all_reduce_mean, **where)


class ThreadWorld:
    """In-process collective: each rank thread deposits its tensor, all get the mean."""

    def __init__(self, size):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size, timeout=30)

    def all_reduce_mean(self, rank):
        def reduce(t):
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            out = torch.stack(self.slots).mean(0)
            self.barrier.wait()               # nobody overwrites a slot before all have read
            return out
        return reduce


@pytest.mark.parametrize("mode", ["params", "representation"])
def test_two_rank_affinity_equals_single_process_over_global_batch(mode):
    torch.manual_seed(1)
    model = ToyMultiTask(n_tasks=3, in_dim=64, n_experts=2, width=16, tower=8)
    names = model.task_names
    steps = [_global_batch(seed) for seed in range(3)]     # N = 3 EMA updates

    single = TaskAffinityComputer(names)
    for x, labels, masks in steps:
        _affinity_on(model, slice(None), x, labels, masks, mode, single, None)

    world, ranks = ThreadWorld(2), [TaskAffinityComputer(names) for _ in range(2)]
    errors = []

    def rank_fn(r):
        try:
            for x, labels, masks in steps:
                rows = slice(0, 12) if r == 0 else slice(12, 24)   # unequal labelled counts per task
                _affinity_on(model, rows, x, labels, masks, mode, ranks[r], world.all_reduce_mean(r))
        except Exception as e:  # surfaced below; a hung peer times out on the barrier
            errors.append(e)
            world.barrier.abort()

    threads = [threading.Thread(target=rank_fn, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors, errors
    assert torch.equal(ranks[0].affinity, ranks[1].affinity)
    assert torch.allclose(ranks[0].affinity, single.affinity, atol=1e-5, rtol=0)
    assert single.pair_count[0, 2] == 3 and not torch.allclose(single.affinity, torch.eye(3))


def test_all_reducing_cosines_instead_would_differ():
    """Guards the test above: averaging per-rank cosines is measurably not the global affinity."""
    torch.manual_seed(1)
    model = ToyMultiTask(n_tasks=3, in_dim=64, n_experts=2, width=16, tower=8)
    x, labels, masks = _global_batch(0)
    single, halves = TaskAffinityComputer(model.task_names), []
    _affinity_on(model, slice(None), x, labels, masks, "params", single, None)
    for rows in (slice(0, 12), slice(12, 24)):
        c = TaskAffinityComputer(model.task_names)
        _affinity_on(model, rows, x, labels, masks, "params", c, None)
        halves.append(c.affinity)
    assert (torch.stack(halves).mean(0) - single.affinity).abs().max() > 1e-3


def _gloo_worker(rank, port, path, mode):
    import datetime
    import faulthandler

    import torch.distributed as dist
    faulthandler.dump_traceback_later(40, exit=True)  # a stuck child prints its stacks and exits
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        # In a function of its own: DDP and its reducer are freed on return, *before* the process
        # group is destroyed (freeing them after it hung about one run in ten).
        _gloo_work(rank, path, mode, dist)
        gc.collect()  # DDP objects in reference cycles too
    finally:
        dist.destroy_process_group()


def _gloo_work(rank, path, mode, dist):
    torch.manual_seed(1)
    model = ToyMultiTask(n_tasks=3, in_dim=64, n_experts=2, width=16, tower=8)
    comp = TaskAffinityComputer(model.task_names)

    def all_reduce_mean(t):
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / dist.get_world_size()

    for seed in range(3):
        x, labels, masks = _global_batch(seed)
        _affinity_on(model, slice(12 * rank, 12 * rank + 12), x, labels, masks, mode, comp, all_reduce_mean)
    torch.save(comp.affinity, f"{path}.{rank}")

    # The loop's pattern under DDP: per-task grads on the wrapped module's parameters (DDP's
    # reducer is not triggered), W synced by hand. Every rank must end with identical state.
    # task02 has no label on rank 0, so its tower is unused there: DDP must be told.
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    adatt = AdaTT(model.task_names, grad_interval=1, warmup_epochs=0, freeze_epoch=1)
    adatt.on_epoch_start(0, 2)
    opt = torch.optim.AdamW([*ddp.parameters(), *adatt.parameters()], lr=1e-2)
    for seed in range(3):
        x, labels, masks = _global_batch(seed)
        rows = slice(12 * rank, 12 * rank + 12)
        logits, _ = ddp(x[rows])
        losses, counts = masked_losses(logits, {k: v[rows] for k, v in labels.items()},
                                       {k: v[rows] for k, v in masks.items()})
        adatt.maybe_update_affinity(seed, losses, params=list(ddp.module.shared_experts.parameters()),
                                    counts=counts, all_reduce_mean=all_reduce_mean)
        enhanced, _ = adatt.transfer_losses(losses)
        opt.zero_grad(set_to_none=True)
        sum(enhanced.values()).backward()
        adatt.sync_gradients(all_reduce_mean)
        opt.step()
    state = torch.cat([t.detach().reshape(-1) for t in [*model.parameters(), adatt.W, adatt.affinity]])
    torch.save(state, f"{path}.ddp.{rank}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_affinity_equals_single_process_and_ranks_stay_in_sync():
    torch.manual_seed(1)
    model = ToyMultiTask(n_tasks=3, in_dim=64, n_experts=2, width=16, tower=8)
    single = TaskAffinityComputer(model.task_names)
    for seed in range(3):
        x, labels, masks = _global_batch(seed)
        _affinity_on(model, slice(None), x, labels, masks, "params", single, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aff")
        # fork: children inherit the imported torch (spawn re-imports it, ~5 s per child here);
        # DataLoader workers rely on the same CPU fork safety.
        ctx = torch.multiprocessing.start_processes(_gloo_worker, args=(_free_port(), path, "params"),
                                                    nprocs=2, join=False, start_method="fork")
        deadline = time.monotonic() + 90  # gloo's own timeout is 30 s; this bounds a stuck child
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                pytest.fail("gloo workers did not finish within 90 s")
        got = [torch.load(f"{path}.{r}") for r in range(2)]
        ddp_state = [torch.load(f"{path}.ddp.{r}") for r in range(2)]
    assert torch.equal(ddp_state[0], ddp_state[1])
    assert torch.equal(got[0], got[1])
    assert torch.allclose(got[0], single.affinity, atol=1e-5, rtol=0)


# ---- prior, masking, clamp -----------------------------------------------------------------
def test_group_prior_construction():
    P = group_prior(["a", "b", "c", "d"], {"a": "g1", "b": "g1", "c": "g2"}, {"g1": 0.8}, inter_strength=0.3)
    raw = torch.tensor([[0, .8, .3, .3], [.8, 0, .3, .3], [.3, .3, 0, .3], [.3, .3, .3, 0]])
    assert torch.allclose(P, raw / raw.sum(1, keepdim=True))
    assert torch.allclose(P.sum(1), torch.ones(4)) and torch.all(P.diagonal() == 0)
    # a group without an explicit strength uses the default 0.5
    P2 = group_prior(["a", "b", "c"], {"a": "g", "b": "g"}, None, 0.3, default_intra_strength=0.5)
    assert P2[0, 1].item() == pytest.approx(0.5 / 0.8)
    assert torch.equal(group_prior(["solo"]), torch.zeros(1, 1))
    with pytest.raises(KeyError, match="unknown tasks"):
        group_prior(["a"], {"b": "g"})
    with pytest.raises(KeyError, match="no task"):
        group_prior(["a"], {"a": "g"}, {"h": 0.7})


def test_minus_inf_masking_blocks_pairs_diagonal_and_absent_tasks():
    A = torch.tensor([[1.0, -0.5, 0.2, 0.3],
                      [-0.5, 1.0, 0.0, 0.1],
                      [0.2, 0.0, 1.0, -0.2],
                      [0.3, 0.1, -0.2, 1.0]])
    W = torch.zeros(4, 4, requires_grad=True)
    P = torch.full((4, 4), 1 / 3).fill_diagonal_(0)
    present = torch.tensor([True, True, True, True])
    w, allowed = transfer_weights(W, A, P, 0.5, present, neg_threshold=-0.1, temperature=1.0)
    assert torch.all(w.diagonal() == 0)
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[2, 3] == 0 and w[3, 2] == 0   # A <= tau_neg
    assert torch.allclose(w.sum(1), torch.ones(4))
    # row 0: softmax over the allowed logits only, R = A (1 - r) + P r
    logits = torch.tensor([0.2, 0.3]) * 0.5 + (1 / 3) * 0.5
    assert torch.allclose(w[0, 2:], torch.softmax(logits, 0))
    # the seed's zero-fill would have given the diagonal weight exp(0) / Z > 0
    assert torch.softmax(torch.tensor([0.0, 0.0, *logits]), 0)[0] > 0.2

    # absent source -> zero column; absent target -> zero row; fully blocked row -> zero transfer
    present = torch.tensor([True, True, False, True])
    w, _ = transfer_weights(W, A, P, 0.5, present)
    assert torch.all(w[:, 2] == 0) and torch.all(w[2] == 0)
    assert torch.all(w[0] == torch.tensor([0, 0, 0, 1.0]))
    assert torch.all(w[1] == torch.tensor([0, 0, 0, 1.0]))
    A_blocked = A.clone()
    A_blocked[1, :] = -0.5
    w, _ = transfer_weights(W, A_blocked, P, 0.5, torch.ones(4, dtype=torch.bool))
    assert torch.all(w[1] == 0)
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    enhanced, transfer, _ = transfer_enhanced_losses(losses, w)
    assert transfer[1] == 0
    enhanced.sum().backward()
    assert torch.isfinite(W.grad).all() and torch.isfinite(losses.grad).all()


def test_clamp_active_when_transfer_exceeds_rho_times_own_loss():
    losses = torch.tensor([1.0, 100.0], requires_grad=True)
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    enhanced, transfer, clamped = transfer_enhanced_losses(losses, w, transfer_lambda=0.1, max_transfer_ratio=0.5)
    assert clamped.tolist() == [True, False]
    assert transfer.tolist() == pytest.approx([0.5, 0.1])               # min(10, 0.5) and min(0.1, 50)
    assert enhanced.tolist() == pytest.approx([1.5, 100.1])
    g0, = torch.autograd.grad(enhanced[0], losses, retain_graph=True)
    assert g0.tolist() == [1.0, 0.0]                                   # clamped: no transfer gradient
    g1, = torch.autograd.grad(enhanced[1], losses)
    assert g1.tolist() == pytest.approx([0.1, 1.0])


# ---- schedule ------------------------------------------------------------------------------
def test_schedule_phases_and_blend_ratio_at_boundaries():
    s = AdaTTSchedule(warmup_epochs=3, freeze_epoch=8, r_start=0.5, r_end=0.1)
    assert [s.phase(e) for e in (0, 2, 3, 7, 8, 20)] == [Phase.WARMUP, Phase.WARMUP, Phase.DYNAMIC,
                                                         Phase.DYNAMIC, Phase.FROZEN, Phase.FROZEN]
    assert s.blend_ratio(0) == pytest.approx(0.5) and s.blend_ratio(3) == pytest.approx(0.5)
    assert s.blend_ratio(4) == pytest.approx(0.5 - 0.4 / 5)
    assert s.blend_ratio(7) == pytest.approx(0.5 - 0.4 * 4 / 5)
    assert s.blend_ratio(8) == pytest.approx(0.1) and s.blend_ratio(30) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"freeze_epoch \(3\) must be > warmup_epochs \(3\)"):
        AdaTTSchedule(3, 3)
    with pytest.raises(ValueError, match="given together"):
        resolve_schedule(10, warmup_epochs=2)
    with pytest.raises(ValueError, match="frozen phase never runs"):
        resolve_schedule(5, warmup_epochs=2, freeze_epoch=5)


@pytest.mark.parametrize("total,expect", [(3, (1, 2)), (4, (1, 3)), (10, (3, 8)), (30, (9, 24))])
def test_fraction_schedule_keeps_three_phases(total, expect):
    s = resolve_schedule(total)
    assert (s.warmup_epochs, s.freeze_epoch) == expect
    assert {s.phase(e) for e in range(total)} == {Phase.WARMUP, Phase.DYNAMIC, Phase.FROZEN}
    with pytest.raises(ValueError, match=">= 3 epochs"):
        resolve_schedule(2)


# ---- the module: phases, transfer, state ---------------------------------------------------
def _toy(seed=0, **kw):
    torch.manual_seed(seed)
    model = ToyMultiTask(n_tasks=4, in_dim=64, n_experts=2, width=16, tower=8)
    groups = {"task00": "g", "task01": "g", "task02": "h"}
    adatt = AdaTT(model.task_names, task_groups=groups, intra_strength={"g": 0.8, "h": 0.6}, **kw)
    return model, adatt


def test_phases_drive_measurement_transfer_and_W_gradient():
    model, adatt = _toy(grad_interval=2, warmup_epochs=1, freeze_epoch=2)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        adatt.transfer_losses({})
    x, labels, masks = toy_batch(4, 32, seed=0)
    shared = list(model.shared_experts.parameters())

    def step(s):
        logits, _ = model(x)
        losses, counts = masked_losses(logits, labels, masks)
        measured = adatt.maybe_update_affinity(s, losses, params=shared, counts=counts)
        enhanced, diag = adatt.transfer_losses(losses)
        return losses, enhanced, diag, measured

    assert adatt.on_epoch_start(0, 3) is Phase.WARMUP
    losses, enhanced, diag, measured = step(0)
    assert measured and diag == {} and all(enhanced[k] is losses[k] for k in losses)
    assert not step(1)[3]                                               # 1 % grad_interval != 0

    assert adatt.on_epoch_start(1, 3) is Phase.DYNAMIC
    losses, enhanced, diag, measured = step(2)
    assert measured
    assert all(enhanced[k] > losses[k] for k in losses)                 # transfer added
    assert set(diag) == {"adatt/transfer_entropy", "adatt/blocked_fraction",
                         "adatt/transfer_ratio", "adatt/clamped_fraction"}
    assert 0 < diag["adatt/transfer_ratio"] <= adatt.max_transfer_ratio
    sum(enhanced.values()).backward()
    assert adatt.W.grad is not None and adatt.W.grad.abs().sum() > 0

    adatt.W.grad = None
    assert adatt.on_epoch_start(2, 3) is Phase.FROZEN and bool(adatt.frozen)
    count = adatt.affinity_computer.update_count.item()
    losses, enhanced, diag, measured = step(4)
    assert not measured and adatt.affinity_computer.update_count.item() == count
    sum(enhanced.values()).backward()
    assert adatt.W.grad is None                                         # weights detached
    assert all(enhanced[k] > losses[k] for k in losses)                 # transfer still applied

    adatt.disable()
    assert adatt.on_epoch_start(2, 3) is Phase.OFF                      # phase 2 stays off
    losses, enhanced, diag, measured = step(6)
    assert not measured and diag == {} and all(enhanced[k] is losses[k] for k in losses)


def test_transfer_losses_masks_absent_tasks_and_rejects_negative_losses():
    _, adatt = _toy(warmup_epochs=0, freeze_epoch=1)
    adatt.on_epoch_start(0, 2)
    losses = {"task00": torch.tensor(1.0), "task01": torch.tensor(2.0), "task02": torch.tensor(float("nan"))}
    enhanced, _ = adatt.transfer_losses(losses, present={"task00": True, "task01": True, "task02": False})
    # only task01 can feed task00 and vice versa: w = 1 on the other present task
    assert enhanced["task00"].item() == pytest.approx(1.0 + 0.1 * 2.0)
    assert enhanced["task01"].item() == pytest.approx(2.0 + 0.1 * 1.0)
    assert math.isnan(enhanced["task02"].item()) and "task03" not in enhanced
    with pytest.raises(ValueError, match=r"non-negative.*task01"):
        adatt.transfer_losses({"task00": torch.tensor(1.0), "task01": torch.tensor(-0.5)})
    with pytest.raises(KeyError, match="no loss"):
        adatt.transfer_losses({"task00": torch.tensor(1.0)}, present={"task01": True})


def _run(model, adatt, opt, epochs, steps_per_epoch, total=4, seed0=0):
    """Deterministic training; returns the per-step enhanced total loss."""
    shared = list(model.shared_experts.parameters())
    out = []
    for epoch in epochs:
        adatt.on_epoch_start(epoch, total)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            x, labels, masks = toy_batch(4, 32, seed=seed0 + step)
            logits, _ = model(x)
            losses, counts = masked_losses(logits, labels, masks)
            adatt.maybe_update_affinity(step, losses, params=shared, counts=counts)
            enhanced, _ = adatt.transfer_losses(losses)
            loss = sum(enhanced.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(loss.item())
    return out


@pytest.mark.parametrize("stop_after", [1, 2])  # resume inside the dynamic phase, and into frozen
def test_state_dict_round_trip_resumes_exactly(stop_after):
    def fresh():
        model, adatt = _toy(seed=3, grad_interval=2, warmup_epochs=1, freeze_epoch=3)
        opt = torch.optim.AdamW([*model.parameters(), *adatt.parameters()], lr=1e-2)
        return model, adatt, opt

    model, adatt, opt = fresh()
    straight = _run(model, adatt, opt, range(4), 3)

    model, adatt, opt = fresh()
    first = _run(model, adatt, opt, range(stop_after + 1), 3)
    state = copy.deepcopy({"m": model.state_dict(), "a": adatt.state_dict(), "o": opt.state_dict()})
    assert {"W", "phase_id", "frozen", "blend_ratio", "epoch", "affinity_computer.affinity",
            "affinity_computer.update_count", "affinity_computer.pair_count"} <= set(state["a"])
    model, adatt, opt = fresh()
    model.load_state_dict(state["m"])
    adatt.load_state_dict(state["a"])
    opt.load_state_dict(state["o"])
    assert adatt.phase is Phase.DYNAMIC and adatt.affinity_computer.update_count.item() > 0
    rest = _run(model, adatt, opt, range(stop_after + 1, 4), 3)
    assert first + rest == straight                                    # bit-identical on CPU
    assert adatt.phase is Phase.FROZEN and bool(adatt.frozen)


def test_sync_gradients_averages_W_grad_in_dynamic_phase_only():
    _, adatt = _toy(warmup_epochs=0, freeze_epoch=1)
    adatt.on_epoch_start(0, 2)
    calls = []
    adatt.sync_gradients(lambda t: calls.append(t) or t * 0 + 7)       # None grad -> zeros reduced
    assert len(calls) == 1 and torch.all(calls[0] == 0) and torch.all(adatt.W.grad == 7)
    adatt.on_epoch_start(1, 2)
    adatt.sync_gradients(lambda t: calls.append(t) or t)
    assert len(calls) == 1


# ---- diagnostics and two-phase helper ------------------------------------------------------
def test_diagnostics_negative_pairs_entropy_and_heatmap(tmp_path):
    names = ["a", "b", "c"]
    A = torch.tensor([[1.0, -0.3, 0.5], [-0.3, 1.0, -0.1], [0.5, -0.1, 1.0]])
    assert negative_transfer_pairs(A, names, -0.1) == [("a", "b", pytest.approx(-0.3)), ("b", "a", pytest.approx(-0.3)),
                                                       ("b", "c", pytest.approx(-0.1)), ("c", "b", pytest.approx(-0.1))]
    allowed = torch.tensor([[False, True, True], [True, False, True], [True, True, False]])
    uniform = torch.tensor([[0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    assert transfer_entropy(uniform, allowed).item() == pytest.approx(1.0)
    peaked = torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    assert transfer_entropy(peaked, allowed).item() == pytest.approx(0.0, abs=1e-6)
    path = save_heatmap(A, names, tmp_path / "sub" / "a.png", "A", vmin=-1, vmax=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="expected"):
        save_heatmap(A, names[:2], tmp_path / "bad.png")
    _, adatt = _toy(warmup_epochs=0, freeze_epoch=1)
    adatt.on_epoch_start(0, 2)
    assert [p.name for p in adatt.save_heatmaps(tmp_path, 0)] == ["adatt_affinity_e000.png", "adatt_transfer_e000.png"]


def test_freeze_shared_parameters_for_phase_two():
    model = ToyMultiTask(n_tasks=2, in_dim=8, n_experts=2, width=4, tower=4)
    frozen = freeze_parameters(model.named_parameters(), prefix_predicate(["shared_experts"]))
    assert frozen and all(n.startswith("shared_experts.") for n in frozen)
    assert all(not p.requires_grad for p in model.shared_experts.parameters())
    trainable = trainable_parameters(model)
    assert len(trainable) == len(list(model.gates.parameters())) + len(list(model.towers.parameters()))
    with pytest.raises(ValueError, match="matched no parameter"):
        freeze_parameters(model.named_parameters(), prefix_predicate(["shared_expert_typo"]))
