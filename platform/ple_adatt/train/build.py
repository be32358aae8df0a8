"""The one place that reads the model/optimizer config and builds torch objects from it."""
from __future__ import annotations

import math

import torch

from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.model.baselines import MMoE, PLE, InputEncoder, MultiTaskModel, SharedBottom, SingleTask, Towers


def task_output_dims(cfg: ExperimentConfig) -> dict[str, int]:
    out = {}
    for name in cfg.task_names():
        t = cfg.dataset.task(name)
        out[name] = t.num_classes if t.type in ("multiclass", "contrastive") else 1
    return out


def build_model(cfg: ExperimentConfig, inputs: dict[str, dict]) -> MultiTaskModel:
    """inputs: data.preprocess.input_shapes(...) -> a MultiTaskModel emitting logits per task."""
    m = cfg.model
    tasks = cfg.task_names()
    encoder = InputEncoder(inputs, m.embedding_dim)
    d_in, hidden = encoder.out_dim, list(m.expert_hidden)
    extractors = {  # explicit registry: arch name -> constructor (kept in sync with the schema by a test)
        "shared_bottom": lambda: SharedBottom(d_in, hidden, tasks, m.dropout),
        "single_task": lambda: SingleTask(d_in, hidden, tasks, m.dropout),
        "mmoe": lambda: MMoE(d_in, hidden, tasks, m.num_experts, m.dropout),
        "ple": lambda: PLE(d_in, hidden, tasks, m.num_shared_experts, m.num_task_experts, m.num_levels, m.dropout),
    }
    extractor = extractors[m.arch]()
    towers = Towers({t: extractor.out_dim for t in tasks}, task_output_dims(cfg), list(m.tower_hidden), m.dropout)
    return MultiTaskModel(encoder, extractor, towers)


ARCHS = ("shared_bottom", "single_task", "mmoe", "ple")


def build_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.999))


def build_scheduler(cfg: ExperimentConfig, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_fraction of the steps, then one cosine decay to 0 (or constant)."""
    warm = int(cfg.train.warmup_fraction * total_steps)
    cosine = cfg.train.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
