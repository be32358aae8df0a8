"""The one place that reads the model/optimizer config and builds torch objects from it: the model,
the loss weighting, adaTT, the optimizer and its schedule."""
from __future__ import annotations

import math
from collections.abc import Collection

import torch

from torch import nn

from ple_adatt.adatt import AdaTT
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.targets import output_bias
from ple_adatt.losses.weighting import WEIGHTINGS
from ple_adatt.model.assembly import HeteroPLE
from ple_adatt.model.adatt_fusion import AdaTTSp
from ple_adatt.model.baselines import MMoE, PLE, InputEncoder, MultiTaskModel, SharedBottom, SingleTask, Towers
from ple_adatt.model.shared_side import build_shared_extractor
from ple_adatt.model.sidecars import Sidecars
from ple_adatt.model.task_side import LogitTransfer, task_basket
from ple_adatt.model.towers import ContrastiveTower, TaskTower


def task_output_dims(cfg: ExperimentConfig) -> dict[str, int]:
    out = {}
    for name in cfg.task_names():
        t = cfg.dataset.task(name)
        out[name] = t.num_classes if t.type in ("multiclass", "contrastive") else 1
    return out


def build_model(cfg: ExperimentConfig, inputs: dict[str, dict], cluster_k: int | None = None,
                targets: dict[str, dict] | None = None) -> nn.Module:
    """inputs: data.preprocess.input_shapes(...) -> a model emitting logits per task. With
    ``targets`` (PreprocessState.targets) every task's output bias starts at its train-split prior."""
    model = MODEL_BUILDERS[cfg.model.arch](cfg, inputs, cluster_k)
    if targets:
        init_output_biases(model, targets)
    return model


def check_model_builds(cfg: ExperimentConfig, state=None) -> nn.Module:
    """Build the model once on the CPU, without data (the meta device cannot run the gates'
    data-dependent buffers; a model is MBs), so configs that would fail in the workers (e.g. ple_hetero with no expert receiving a feature group) fail in the driver or in
    `ple-adatt validate`. Without a fitted ``state`` every categorical column gets a 2-slot vocabulary
    and cluster_probs 4 clusters: shapes that matter for routing, not for widths.
    Returns the model; raises ValueError naming the arch and the builder's message."""
    from ple_adatt.data.preprocess import PreprocessState, input_shapes

    spec = cfg.dataset
    if state is None:
        state = PreprocessState(vocab={n: [["x"]] * len(g.columns) for n, g in spec.groups.items()
                                       if g.kind == "categorical"}, cluster_k=4 if spec.cluster_probs else None)
    try:
        return build_model(cfg, input_shapes(spec, state), state.cluster_k)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"model.arch={cfg.model.arch} cannot be built for dataset '{spec.name}': {e}") from e


def init_output_biases(model: nn.Module, targets: dict[str, dict]) -> list[str]:
    """Set each task head's bias to its prior (data/targets.output_bias: binary log-odds, multiclass
    centred log-priors, regression 0 = the standardised mean), for every arch: a head is the
    ``head`` Linear of the TaskTower registered under the task's name. Returns the tasks set.
    Without it a rare task starts at p = 0.5 and spends its first epochs learning the base rate."""
    done = []
    for name, module in model.named_modules():
        task = name.rsplit(".", 1)[-1]
        if not isinstance(module, TaskTower) or task not in targets:
            continue
        bias = output_bias(targets[task], module.head.out_features)
        if bias is not None and module.head.bias is not None:
            with torch.no_grad():
                module.head.bias.copy_(torch.as_tensor(bias, dtype=module.head.bias.dtype))
            done.append(task)
    return done


def _mlp_extractor_model(cfg: ExperimentConfig, inputs: dict[str, dict], cluster_k: int | None) -> nn.Module:
    """Embeddings + an MLP-expert extractor of the config's arch + one tower per task."""
    m, tasks = cfg.model, cfg.task_names()
    encoder = InputEncoder(inputs, m.embedding_dim)
    d_in, hidden = encoder.out_dim, list(m.expert_hidden)
    if m.arch == "shared_bottom":
        extractor = SharedBottom(d_in, hidden, tasks, m.dropout)
    elif m.arch == "single_task":
        extractor = SingleTask(d_in, hidden, tasks, m.dropout)
    elif m.arch == "mmoe":
        extractor = MMoE(d_in, hidden, tasks, m.num_experts, m.dropout)
    elif m.arch == "adatt_fusion":
        extractor = AdaTTSp(d_in, hidden, tasks, m.num_task_experts, m.num_shared_experts, m.num_levels, m.dropout)
    else:
        extractor = PLE(d_in, hidden, tasks, m.num_shared_experts, m.num_task_experts, m.num_levels, m.dropout)
    towers = Towers({t: extractor.out_dim for t in tasks}, task_output_dims(cfg), list(m.tower_hidden), m.dropout)
    shared_dim = len(extractor.shared_modules()) * extractor.out_dim
    return MultiTaskModel(encoder, extractor, towers,
                          sidecars=build_sidecars(cfg, dict.fromkeys(tasks, extractor.out_dim), shared_dim))


def build_sidecars(cfg: ExperimentConfig, task_dims: dict[str, int], shared_dim: int) -> Sidecars | None:
    """model.evidential heads (tasks of the listed types, on their tower inputs of width task_dims[t])
    and the model.sae SAE on the shared representation [B, shared_dim]; None when both are off."""
    m = cfg.model
    if not (m.sae.enabled or m.evidential.enabled):
        return None
    types = {t: cfg.dataset.task(t).type for t in task_dims}
    heads = {t: ty for t, ty in types.items() if m.evidential.enabled and ty in m.evidential.task_types}
    return Sidecars(heads, task_dims, task_output_dims(cfg), shared_dim=shared_dim if m.sae.enabled else None,
                    sae_expansion=m.sae.expansion, sae_l1=m.sae.l1)




def build_hetero_ple(cfg: ExperimentConfig, inputs: dict[str, dict], cluster_k: int | None) -> HeteroPLE:
    """The seed's PLE from its blocks; widths are derived from the blocks, never configured twice."""
    m, spec, tasks = cfg.model, cfg.dataset, cfg.task_names()
    groups = {key.split("/", 1)[1]: {"kind": v["kind"], "experts": v["experts"],
                                     **({"cardinalities": v["cardinalities"]} if v["kind"] == "categorical"
                                        else {"shape": v["shape"]})}
              for key, v in inputs.items()}
    task_modes = {t: spec.task(t).hmm_mode for t in tasks if spec.task(t).hmm_mode}
    modes = list(spec.hmm)
    shared = build_shared_extractor(
        groups, tasks, experts=list(m.experts.use), required=list(m.experts.required),
        expert_enabled={e: False for e in m.experts.disabled},
        expert_kwargs={"hgcn": {"out_dim": m.experts.hgcn_out_dim},
                       **{e: {"out_dim": m.experts.out_dim} for e in m.experts.use if e != "hgcn"}},
        dropout=m.dropout, gate=m.gate.kind, gate_type=m.gate.activation, dim_normalize=m.gate.dim_normalize,
        domain_prior={t: list(v) for t, v in m.gate.domain_prior.items() if t in tasks},
        entropy_weight=m.gate.entropy_lambda,
        cgc_layers=m.gate.levels, hmm_modes=modes, task_hmm_mode=task_modes,
        hmm_default_mode=modes[-1] if modes else None)
    hmm_dim = shared.hmm_dim
    basket = None
    if m.basket.enabled:
        basket = task_basket(per_cluster=m.basket.per_cluster_legacy, task_dims={t: shared.task_out_dim for t in tasks},
                             task_groups={t: spec.task(t).group for t in tasks},
                             task_modes={t: shared.hmm.task_modes[t] for t in tasks} if shared.hmm else None,
                             hmm_dim=hmm_dim, n_clusters=cluster_k or 0, cluster_dim=m.basket.cluster_dim,
                             hidden_dims=list(m.basket.hidden), out_dim=m.basket.out_dim, dropout=m.dropout)
        tower_in = m.basket.out_dim + (shared.task_out_dim + hmm_dim if m.basket.skip else 0)
    else:
        tower_in = shared.task_out_dim + hmm_dim
    out_dims = task_output_dims(cfg)
    towers = nn.ModuleDict({
        t: ContrastiveTower(tower_in, out_dims[t], embed_dim=m.contrastive_dim, hidden_dims=list(m.tower_hidden),
                            tau=m.contrastive_tau)
        if spec.task(t).type == "contrastive" else TaskTower(tower_in, out_dims[t], list(m.tower_hidden), m.dropout)
        for t in tasks})
    transfer = None
    edges = [(e.source, e.target, e.strength) for e in m.logit_transfer.edges if e.source in tasks and e.target in tasks]
    if m.logit_transfer.enabled and edges:  # edges touching an inactive task are dropped
        transfer = LogitTransfer(tasks, {t: spec.task(t).type for t in tasks}, out_dims, edges,
                                 hidden_dim=tower_in, detach_source=m.logit_transfer.detach_source)
    return HeteroPLE(shared, towers, tasks, basket=basket, transfer=transfer, basket_skip=m.basket.skip,
                     sidecars=build_sidecars(cfg, dict.fromkeys(tasks, tower_in), shared.shared_dim))


MODEL_BUILDERS = {  # model.arch -> builder; the dict build_model dispatches on (a test checks it against the schema)
    "shared_bottom": _mlp_extractor_model,
    "single_task": _mlp_extractor_model,
    "mmoe": _mlp_extractor_model,
    "ple": _mlp_extractor_model,
    "ple_hetero": build_hetero_ple,
    "adatt_fusion": _mlp_extractor_model,
}


def build_optimizer(cfg: ExperimentConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW; groups may carry their own lr / weight_decay (per-expert overrides, no-decay extras)."""
    t = cfg.train
    return torch.optim.AdamW(params, lr=lr or t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.999))


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


def build_weighting(cfg: ExperimentConfig) -> torch.nn.Module:
    tasks = cfg.task_names()
    return WEIGHTINGS[cfg.loss_weighting.name](tasks, {t: cfg.task_settings(t).weight for t in tasks},
                                               **cfg.weighting_params())


def build_adatt(cfg: ExperimentConfig) -> AdaTT | None:
    if not cfg.adatt.enabled:
        return None
    a, tasks = cfg.adatt, cfg.task_names()
    return AdaTT(tasks, task_groups={t: cfg.dataset.task(t).group for t in tasks},
                 intra_strength=dict(a.intra_strength), inter_strength=a.inter_strength,
                 transfer_lambda=a.transfer_lambda, temperature=a.temperature, ema_decay=a.ema_decay,
                 neg_threshold=a.neg_threshold, max_transfer_ratio=a.max_transfer_ratio,
                 grad_interval=a.grad_interval, prior_blend_start=a.prior_blend_start,
                 prior_blend_end=a.prior_blend_end, warmup_fraction=a.warmup_fraction,
                 freeze_fraction=a.freeze_fraction, warmup_epochs=a.warmup_epochs, freeze_epoch=a.freeze_epoch)


def make_optimizer(cfg: ExperimentConfig, model: torch.nn.Module, extras: list[torch.nn.Module], lr: float,
                   total_steps: int, frozen: Collection[str] = ()):
    """AdamW over the model's parameters not named in ``frozen`` (per-expert lr/wd groups for
    ple_hetero) + extras without weight decay (uncertainty log-variances, adaTT's W), and its
    warmup/cosine schedule. ``frozen``: train/trainable.py's set for the training phase."""
    trainable = [p for n, p in model.named_parameters() if n not in frozen]
    keep = {id(p) for p in trainable}
    if hasattr(model, "shared") and (cfg.model.experts.lr or cfg.model.experts.weight_decay):
        groups = [dict(g, params=[p for p in g["params"] if id(p) in keep]) for g in model.shared.param_groups(
            cfg.model.experts.lr, cfg.model.experts.weight_decay, lr, cfg.train.weight_decay)]
        in_shared = {id(p) for p in model.shared.parameters()}
        groups.append({"params": [p for p in trainable if id(p) not in in_shared]})
    else:
        groups = [{"params": trainable}]
    groups.append({"params": [p for m in extras for p in m.parameters()], "weight_decay": 0.0})
    optimizer = build_optimizer(cfg, [g for g in groups if g["params"]], lr)
    return optimizer, build_scheduler(cfg, optimizer, total_steps)


def set_schedule_position(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Move a (freshly loaded) schedule to `step` and set the optimizer's lr to match.

    The schedule is per optimizer step over steps_per_epoch x epochs, and steps_per_epoch follows
    the world size. Checkpoints are taken at epoch ends, so a run resumed on another number of
    workers continues at completed_epochs x (its steps_per_epoch): from there on it follows the
    schedule of a run started at that size, and the lr at every epoch boundary is unchanged."""
    scheduler.last_epoch = step - 1
    scheduler.step()  # recomputes every group's lr for `step` (closed form: LambdaLR)
