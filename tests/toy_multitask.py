"""A toy multi-task MoE for adaTT's unit tests, and adaTT's step-time overhead on it (docs/adatt.md,
"Cost on a toy model": ``PYTHONPATH=platform python tests/toy_multitask.py --threads 1``). Not part
of the library: the platform's own overhead figures come from launch/benchmark.py on the real model.

Notation: B batch, F input features, E shared experts, D expert width, T tasks.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ple_adatt.adatt import AdaTT


class ToyMultiTask(nn.Module):
    """Shared experts -> per-task softmax gate -> per-task tower (binary logits)."""

    def __init__(self, n_tasks: int = 16, in_dim: int = 64, n_experts: int = 4, width: int = 128, tower: int = 32):
        super().__init__()
        self.task_names = [f"task{i:02d}" for i in range(n_tasks)]
        self.shared_experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            for _ in range(n_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, n_experts) for t in self.task_names})
        self.towers = nn.ModuleDict({t: nn.Sequential(nn.Linear(width, tower), nn.ReLU(), nn.Linear(tower, 1))
                                     for t in self.task_names})

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """x [B, F] -> (task -> logits [B], shared representation z [B, E, D])."""
        z = torch.stack([e(x) for e in self.shared_experts], dim=1)                  # [B, E, D]
        out = {}
        for t in self.task_names:
            g = torch.softmax(self.gates[t](x), dim=-1)                              # [B, E]
            out[t] = self.towers[t](torch.einsum("be,bed->bd", g, z)).squeeze(-1)   # [B]
        return out, z


def toy_batch(n_tasks: int, batch: int, in_dim: int = 64, seed: int = 0, label_rate: float = 0.8):
    """x [B, F], labels task -> [B] float, masks task -> [B] bool (missing labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_dim, generator=g)
    labels, masks = {}, {}
    for i in range(n_tasks):
        name = f"task{i:02d}"
        labels[name] = (x[:, i % in_dim] + 0.5 * torch.randn(batch, generator=g) > 0).float()
        masks[name] = torch.rand(batch, generator=g) < label_rate
    return x, labels, masks


def masked_losses(logits, labels, masks) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Mean BCE over labelled rows per task; tasks with no labelled row are omitted."""
    losses, counts = {}, {}
    for t, m in masks.items():
        n = int(m.sum())
        if n:
            losses[t] = F.binary_cross_entropy_with_logits(logits[t][m], labels[t][m])
            counts[t] = n
    return losses, counts


def adatt_overhead(n_tasks: int = 16, batch: int = 512, steps: int = 40, n_experts: int = 4,
                   width: int = 128, seed: int = 0, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Seconds per training step, {variant: {"wall": s, "cpu": s}}: adaTT off, and on (dynamic
    phase) with parameter or representation affinity at grad_interval 1 and 10.

    "cpu" is this process's CPU time: with one torch thread on a CPU device it is insensitive
    to other load on the machine, unlike wall time.

    Variants run round-robin in blocks of 10 steps so that load from other processes on the
    machine hits them alike; each keeps its own model, optimizer and step counter."""
    variants = {"off": None, "params_every_1": ("params", 1), "params_every_10": ("params", 10),
                "repr_every_1": ("repr", 1), "repr_every_10": ("repr", 10)}
    dev = torch.device(device)
    x, labels, masks = toy_batch(n_tasks, batch, seed=seed)
    x = x.to(dev)
    labels = {k: v.to(dev) for k, v in labels.items()}
    masks = {k: v.to(dev) for k, v in masks.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    runs = {}
    for key, variant in variants.items():
        torch.manual_seed(seed)
        model = ToyMultiTask(n_tasks, n_experts=n_experts, width=width).to(dev)
        params = list(model.parameters())
        adatt = None
        if variant is not None:
            adatt = AdaTT(model.task_names, grad_interval=variant[1], warmup_epochs=0, freeze_epoch=1)
            adatt.to(dev).on_epoch_start(0, 2)  # dynamic phase: measurement and transfer both run
            params += list(adatt.parameters())
        runs[key] = dict(model=model, adatt=adatt, variant=variant, step=0, wall=[], cpu=[],
                         opt=torch.optim.AdamW(params, lr=1e-3),
                         shared=list(model.shared_experts.parameters()))

    def train_step(run):
        model, adatt, variant, opt = run["model"], run["adatt"], run["variant"], run["opt"]
        logits, z = model(x)
        losses, counts = masked_losses(logits, labels, masks)
        if adatt is not None:
            where = dict(params=run["shared"]) if variant[0] == "params" else dict(representation=z)
            adatt.maybe_update_affinity(run["step"], losses, counts=counts, **where)
            losses, _ = adatt.transfer_losses(losses)
        opt.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()
        opt.step()
        run["step"] += 1

    for run in runs.values():  # warm allocator and kernels
        train_step(run)
    block = 10  # a multiple of the largest grad_interval: each block has the same measurement count
    for _ in range(max(1, steps // block)):
        for run in runs.values():
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                train_step(run)
            sync()
            run["wall"].append((time.perf_counter() - start) / block)
            run["cpu"].append((time.process_time() - cpu) / block)

    def median(xs):
        return sorted(xs)[len(xs) // 2]
    return {key: {"wall": median(run["wall"]), "cpu": median(run["cpu"])} for key, run in runs.items()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = adatt_overhead(args.tasks, args.batch, args.steps, width=args.width, device=args.device)
    print(f"device={args.device} tasks={args.tasks} batch={args.batch} width={args.width} threads={torch.get_num_threads()}")
    for k, v in res.items():
        print(f"{k:16s} wall {1000 * v['wall']:8.2f} ms/step x{v['wall'] / res['off']['wall']:5.2f}   "
              f"cpu {1000 * v['cpu']:8.2f} ms/step x{v['cpu'] / res['off']['cpu']:5.2f}")
