"""The one experiment schema, shared by train, evaluate, tune and ablation jobs.

Strict pydantic v2 models: unknown keys are errors, choices are Literals, values are frozen.
Values that follow from others are computed (methods), not configured.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ple_adatt.config.dataset import DatasetSpec, ExpertName, Section

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""Names that become folders and MLflow search values: no path separators, quotes or leading dot."""
LossName = Literal["focal", "bce", "ce", "huber", "mse", "infonce"]
# Which losses make sense for which task type (the first is the default).
LOSSES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "binary": ("bce", "focal"),
    "multiclass": ("ce", "focal"),
    "regression": ("mse", "huber"),
    "contrastive": ("infonce", "ce"),
}


class TaskTrainConfig(Section):
    """Per-task training settings; the task itself (type, label) lives in the dataset spec."""

    loss: LossName | None = None
    """None picks the default for the task type (binary: bce, multiclass: ce, regression: mse on the
    standardised target, contrastive: infonce); see docs/rare-tasks.md for rare binary tasks."""
    weight: float = Field(1.0, ge=0.0)
    """Fixed task weight, applied exactly once (inside the weighting strategy)."""
    focal_alpha: float = Field(0.25, gt=0.0, lt=1.0)
    """Focal alpha: weight of the positive class (binary) or of every class (multiclass)."""
    focal_gamma: float = Field(2.0, ge=0.0)
    """Focal gamma: down-weights easy examples by (1 - p_t)^gamma; 0 = plain cross-entropy."""
    huber_delta: float = Field(1.0, gt=0.0)
    """Huber loss: quadratic below delta, linear above (regression tasks), in standard deviations of
    the train-split target (regression labels are standardised before the loss)."""
    pos_weight: float | None = Field(None, gt=0.0)
    """Binary tasks with loss=bce: weight of the positive rows (n_neg / n_pos balances the classes);
    None = 1. The run names rare tasks (base rate < 5 %) and the value that balances them."""


class ExpertsSection(Section):
    """ple_hetero only: the seven heterogeneous shared experts (spec §3)."""

    use: list[ExpertName] = ["deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"]
    """Experts to build, in block order; an expert no feature group routes to is left out."""
    disabled: list[ExpertName] = []
    """Leave-one-out switch: experts listed here are not built even if routed."""
    required: list[ExpertName] = []
    """Experts that must receive input; a clear error if no group routes to one of them."""
    out_dim: int = Field(64, ge=4)
    """Output width of every shared expert except H-GCN."""
    hgcn_out_dim: int = Field(128, ge=4)
    """Output width of the H-GCN expert (128-D in the seed, spec §3.3)."""
    lr: dict[ExpertName, float] = {}
    """Optional per-expert learning rates (parameter groups); others use train.lr."""
    weight_decay: dict[ExpertName, float] = {}
    """Optional per-expert weight decay (parameter groups); others use train.weight_decay."""


class GateSection(Section):
    """ple_hetero only: the CGC gate over the shared expert blocks (spec §4, §11.1)."""

    kind: Literal["attention", "layer", "both"] = "attention"
    """attention = G1 CGCAttention (recommended); layer = paper-exact stacked CGCLayers; both."""
    activation: Literal["softmax", "sigmoid"] = "softmax"
    """How gate logits become weights summing to 1: softmax, or sigmoids renormalised."""
    dim_normalize: bool = True
    """Scale each block by sqrt(mean_dim / d_i) so a 128D expert does not dominate."""
    domain_prior: dict[str, list[ExpertName]] = {}
    """task -> preferred experts; their gate logits start at +1, the rest at -1."""
    entropy_lambda: float = Field(0.01, ge=0.0)
    """Weight of the gate-entropy bonus (loss -lambda * H(gate)), which keeps gates from collapsing early."""
    levels: int = Field(1, ge=1)
    """CGCLayer levels (kind: layer/both)."""


class BasketSection(Section):
    """ple_hetero only: group task-expert basket with soft cluster routing (spec §5.1)."""

    enabled: bool = True
    """Off = towers read the gated task representation directly."""
    per_cluster_legacy: bool = False
    """The seed's per-(task x cluster) MLPs, for the parameter-count comparison."""
    hidden: list[int] = [128, 64]
    """Hidden layer widths of each group's basket MLP."""
    out_dim: int = Field(32, ge=1)
    """Width of the basket output each task tower reads."""
    cluster_dim: int = Field(32, ge=1)
    """Width of the soft cluster embedding (needs the dataset's cluster_probs column)."""
    skip: bool = False
    """Towers also read the task's own gated representation (and HMM projection) next to the basket
    output. Off = the seed's layout, where a group's tasks share one 32-D summary that differs
    between them only through their gate weights."""


class TransferEdge(Section):
    source: str
    """Task whose logits are transferred (a dataset task)."""
    target: str
    """Task that receives them (a dataset task)."""
    strength: float = Field(0.5, ge=0.0)
    """Scale of the transferred logit term (0.5 in the seed)."""


class LogitTransferSection(Section):
    """ple_hetero only: residual logit transfer along a task DAG (spec §5.2)."""

    enabled: bool = False
    """Off = the edges are kept in the config but no transfer module is built."""
    edges: list[TransferEdge] = []
    """The task DAG; edges touching an inactive task are skipped."""
    detach_source: bool = False
    """Stop gradients into the source tower, so a target cannot pull on its source (spec §11.13)."""


class SAESection(Section):
    """Sparse autoencoder on the shared representation (spec §6.7): an analysis sidecar trained on a
    detached input, so it never shapes the model. Every arch but single_task (nothing is shared)."""

    enabled: bool = False
    """Build and train the SAE; evaluate then reports its sparsity and dead-feature rate, and MLflow
    gets its feature dictionary (artifact sae/dictionary.npz) at the end of fit."""
    expansion: int = Field(4, ge=1)
    """Dictionary size as a multiple of the shared width: L = expansion x D latents (spec: 4)."""
    l1: float = Field(1e-3, ge=0.0)
    """Sparsity coefficient lambda_1 of the L1 penalty on the latents (spec: 0.001)."""
    loss_weight: float = Field(0.01, ge=0.0)
    """Weight of the SAE loss in the total loss (spec: 0.01); it only scales the SAE's own gradients."""


class EvidentialSection(Section):
    """Evidential heads parallel to the towers (spec §6.8): a Beta (binary) or Dirichlet
    (multiclass) head, Sensoy et al. 2018, or a Normal-Inverse-Gamma head (regression), Amini et al.
    2020, on each task's tower input. Predictions still come from the towers; the heads add a
    per-prediction uncertainty (predict's u_<task> columns)."""

    enabled: bool = False
    """Build and train the heads for the task types listed in task_types."""
    task_types: list[Literal["binary", "multiclass", "regression"]] = ["binary", "multiclass", "regression"]
    """Task types that get a head (contrastive tasks never do)."""
    loss_weight: float = Field(1.0, ge=0.0)
    """Weight of the summed per-task evidential losses in the total loss."""
    kl_weight: float = Field(0.01, ge=0.0)
    """lambda_KL of the Dirichlet KL(Dir(alpha~) || Dir(1)) term (spec: 0.01)."""
    anneal_epochs: int = Field(10, ge=0)
    """The KL coefficient ramps as lambda_KL x min(1, epoch / anneal_epochs) (spec: 10; 0 = no ramp)."""
    nig_reg: float = Field(0.01, ge=0.0)
    """lambda of the NIG evidence regulariser |y - mu| (2v + alpha) for regression heads."""
    interval: float = Field(0.9, gt=0.0, lt=1.0)
    """Nominal coverage of the regression predictive interval (Student-t of the NIG) that evaluate
    checks: the share of labels inside it is reported as <task>/coverage."""


class _ModelBase(Section):
    """Fields every architecture has; each arch below adds only the fields its builder reads."""

    arch: Literal["shared_bottom", "mmoe", "ple", "single_task", "ple_hetero", "adatt_fusion"]
    """shared_bottom | mmoe | ple (CGC levels with MLP experts) | single_task (one net per task) |
    ple_hetero (the seed's PLE: heterogeneous experts, CGC gate, HMM, basket, logit transfer) |
    adatt_fusion (Meta's AdaTT-sp, Li et al. KDD 2023: representation-level task fusion).
    Switching it in an override drops the base's fields the new arch does not have (with a note)."""
    tower_hidden: list[int] = [64, 32]
    """Hidden layer widths of each task tower (MLP before the task's output layer)."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout rate in experts, towers (and the ple_hetero basket)."""
    sae: SAESection = SAESection()
    """Sparse-autoencoder sidecar on the shared representation (off by default)."""
    evidential: EvidentialSection = EvidentialSection()
    """Evidential uncertainty heads next to the towers (off by default)."""


class _MLPModel(_ModelBase):
    """The baselines built from an input encoder and MLP experts (train/build.build_model)."""

    embedding_dim: int = Field(8, ge=1)
    """Width of each categorical embedding."""
    expert_hidden: list[int] = [128, 64]
    """MLP expert (and shared bottom) layer widths; the last is the expert output width D."""


class SharedBottomModel(_MLPModel):
    """One shared MLP under all task towers."""

    arch: Literal["shared_bottom"] = "shared_bottom"
    """Selects this architecture."""


class SingleTaskModel(_MLPModel):
    """One independent MLP per task (no shared parameters: no GradNorm, no adaTT)."""

    arch: Literal["single_task"] = "single_task"
    """Selects this architecture."""


class MMoEModel(_MLPModel):
    """Multi-gate mixture of experts: shared MLP experts, one softmax gate per task."""

    arch: Literal["mmoe"] = "mmoe"
    """Selects this architecture."""
    num_experts: int = Field(4, ge=1)
    """Shared MLP experts, mixed by every task's gate."""


class PLEModel(_MLPModel):
    """PLE with MLP experts: stacked CGC levels of shared and task-specific experts."""

    arch: Literal["ple"] = "ple"
    """Selects this architecture (the default)."""
    num_shared_experts: int = Field(2, ge=1)
    """Shared experts per CGC level, seen by every task's gate."""
    num_task_experts: int = Field(1, ge=0)
    """Task-specific experts per task and level."""
    num_levels: int = Field(1, ge=1)
    """Stacked CGC levels (1 = CGC)."""


class AdaTTFusionModel(_MLPModel):
    """Meta's AdaTT-sp (Li et al., "AdaTT: Adaptive Task-to-Task Fusion Network for Multitask
    Learning in Recommendations", KDD 2023, arXiv:2304.04959) with MLP experts: per level, each task
    has its own expert group and there is a shared group; each task's fusion gate mixes the outputs of
    ALL experts (every task's and the shared ones), plus a linear residual of the task's own experts.
    Representation-level transfer, as opposed to adatt.enabled (our loss-level gradient-affinity
    transfer); docs/adatt.md compares the two."""

    arch: Literal["adatt_fusion"] = "adatt_fusion"
    """Selects this architecture."""
    num_task_experts: int = Field(1, ge=1)
    """Experts in each task's own group per level (the residual fuses them linearly; with one expert
    per group it is that expert's output, as in the paper)."""
    num_shared_experts: int = Field(2, ge=0)
    """Experts in the shared group per level (0 = AdaTT-sp without shared experts)."""
    num_levels: int = Field(1, ge=1)
    """Stacked fusion levels; every level but the last also fuses a shared output for the next."""


class HeteroPLEModel(_ModelBase):
    """The seed's PLE: heterogeneous shared experts, CGC gate, HMM routing, basket, logit transfer."""

    arch: Literal["ple_hetero"] = "ple_hetero"
    """Selects this architecture."""
    experts: ExpertsSection = ExpertsSection()
    """Which heterogeneous shared experts to build, and their widths and learning rates."""
    gate: GateSection = GateSection()
    """The CGC gate over the shared expert blocks."""
    basket: BasketSection = BasketSection()
    """The group task-expert basket between gate and towers."""
    logit_transfer: LogitTransferSection = LogitTransferSection()
    """Residual logit transfer along a task DAG."""
    contrastive_dim: int = Field(64, ge=2)
    """Embedding width of contrastive-task towers."""
    contrastive_tau: float = Field(0.07, gt=0.0)
    """InfoNCE temperature of contrastive-task towers."""


# The model section: one class per arch (a registry dict literal, checked against train/build.MODEL_BUILDERS).
MODEL_ARCHS: dict[str, type[_ModelBase]] = {
    "shared_bottom": SharedBottomModel,
    "single_task": SingleTaskModel,
    "mmoe": MMoEModel,
    "ple": PLEModel,
    "ple_hetero": HeteroPLEModel,
    "adatt_fusion": AdaTTFusionModel,
}


def _arch_of(value) -> str | None:
    """The union's tag; a model section without `arch` is the default arch, ple."""
    if isinstance(value, dict):
        return value.get("arch", "ple")
    return getattr(value, "arch", None)


ModelConfig = Annotated[Union[tuple(Annotated[cls, Tag(arch)] for arch, cls in MODEL_ARCHS.items())],
                        Discriminator(_arch_of)]
"""The `model:` section, a discriminated union on `arch`: each arch accepts only its own fields."""


class AdattSection(Section):
    """adaTT: task-affinity-driven loss transfer (spec §7). Defaults from spec §7.6; off by default
    as in the seed's final production config."""

    enabled: bool = False
    """Turn adaTT on (phase 1 only; two-phase training switches it off in phase 2)."""
    transfer_lambda: float = Field(0.1, ge=0.0)
    """lambda: scale of the transfer term T_i = lambda * sum_j w_ij L_j added to each task's loss
    (spec §7.3)."""
    temperature: float = Field(1.0, gt=0.0)
    """T: softmax temperature of the transfer weights w_i = softmax_j(R_ij / T); below 0.5 they get
    sharp, above 2 nearly uniform (spec §7.2)."""
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0)
    """beta: EMA decay of the gradient-cosine affinity A = beta A + (1 - beta) C (0.9 = a window of
    about 10 measurements, spec §7.1)."""
    neg_threshold: float = Field(-0.1, ge=-1.0, le=1.0)
    """tau_neg: pairs with affinity A_ij <= tau_neg get no transfer (negative-transfer blocking, spec §7.2)."""
    max_transfer_ratio: float = Field(0.5, ge=0.0)
    """rho: clamp T_i <= rho * stopgrad(L_i), so the transfer never outweighs a task's own loss (spec §7.3)."""
    grad_interval: int = Field(10, ge=1)
    """Measure the task-gradient affinity every this many steps (each measurement costs one extra
    backward per task; raise it to save time)."""
    prior_blend_start: float = Field(0.5, ge=0.0, le=1.0)
    """r at the start of phase 2: R = (W + A)(1 - r) + P r blends in the group prior P (spec §7.4)."""
    prior_blend_end: float = Field(0.1, ge=0.0, le=1.0)
    """r at the freeze boundary; r anneals linearly from prior_blend_start to this value."""
    inter_strength: float = Field(0.3, ge=0.0)
    """Group-prior strength between tasks of different groups (before row normalisation, spec §7.4)."""
    intra_strength: dict[str, float] = {}
    """task group -> intra-group prior strength (0.5 if missing)."""
    warmup_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    """End of the warmup phase (affinity measured, no transfer) as a fraction of the phase-1 epochs."""
    freeze_fraction: float = Field(0.8, gt=0.0, le=1.0)
    """Start of the frozen phase (transfer weights fixed, affinity no longer measured) as a fraction
    of the phase-1 epochs. Boundaries are fractions so short runs keep all three phases."""
    warmup_epochs: int | None = Field(None, ge=0)
    """Explicit end of the warmup phase in epochs (0-based: epochs < warmup_epochs warm up). Set it
    together with freeze_epoch, instead of the fractions (setting both kinds is an error)."""
    freeze_epoch: int | None = Field(None, ge=1)
    """Explicit first frozen epoch (0-based), > warmup_epochs and < train.epochs so every phase runs;
    set together with warmup_epochs instead of the fractions."""
    affinity_on: Literal["parameters", "expert_heads", "representation"] = "expert_heads"
    """Task gradients w.r.t. every shared-expert parameter (spec §7.1; one backward through all
    experts per task), each expert's output head (GradNorm's last shared layer; the default: +8 %
    step time at grad_interval 10 on the shipped model, docs/adatt.md) or the shared representation (cheapest)."""

    @model_validator(mode="after")
    def _order(self):
        explicit = [k for k in ("warmup_epochs", "freeze_epoch") if getattr(self, k) is not None]
        fractions = sorted({"warmup_fraction", "freeze_fraction"} & self.model_fields_set)
        if explicit and fractions:
            raise ValueError(f"adatt.{explicit[0]} and adatt.{fractions[0]} are both set: give the schedule "
                             f"either in epochs (warmup_epochs + freeze_epoch) or as fractions, not both")
        if len(explicit) == 1:
            missing = ({"warmup_epochs", "freeze_epoch"} - set(explicit)).pop()
            raise ValueError(f"adatt.{explicit[0]} needs adatt.{missing} too (set both, or neither to use fractions)")
        if explicit and self.freeze_epoch <= self.warmup_epochs:
            raise ValueError(f"adatt.freeze_epoch ({self.freeze_epoch}) must be > adatt.warmup_epochs "
                             f"({self.warmup_epochs}), or the dynamic phase never runs")
        if self.freeze_fraction <= self.warmup_fraction:
            raise ValueError(f"freeze_fraction ({self.freeze_fraction}) must be > warmup_fraction ({self.warmup_fraction})")
        return self


class TwoPhaseSection(Section):
    """Phase 2 (spec §8.1): freeze shared experts + CGC, disable adaTT, fine-tune basket and towers
    with a fresh optimizer and schedule."""

    enabled: bool = False
    """Run phase 2 after train.epochs phase-1 epochs (needs model.arch=ple_hetero)."""
    phase2_epochs: int = Field(2, ge=1)
    """Epochs of the phase-2 fine-tune."""
    phase2_lr: float | None = Field(None, gt=0.0)
    """None = train.lr."""

class FixedWeighting(Section):
    """Fixed task weights only (tasks.<name>.weight)."""

    name: Literal["fixed"] = "fixed"
    """Selects fixed weights (the default)."""


class UncertaintyWeighting(Section):
    """Kendall et al. (CVPR 2018): sum_k w_k (exp(-s_k) L_k + s_k), learnable s_k clamped to [-4, 4]."""

    name: Literal["uncertainty"]
    """Selects uncertainty weighting."""


class GradNormWeighting(Section):
    """Chen et al. (ICML 2018): task weights steered so gradient norms on shared params balance."""

    name: Literal["gradnorm"]
    """Selects GradNorm."""
    alpha: float = Field(1.5, ge=0.0)
    """Restoring-force asymmetry; 0 = equal gradient norms."""
    lr: float = Field(0.025, gt=0.0)
    """Learning rate of the task weights (their own optimizer)."""
    interval: int = Field(1, ge=1)
    """Update the weights every `interval` steps (each update costs one backward per task)."""


class DWAWeighting(Section):
    """Liu et al. (CVPR 2019): weights from epoch-level loss ratios, K softmax(r / temperature)."""

    name: Literal["dwa"]
    """Selects dynamic weight average."""
    temperature: float = Field(2.0, gt=0.0)
    """Softmax temperature over loss ratios; larger = more uniform weights."""


WEIGHTINGS: dict[str, type[Section]] = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting,
                                          "gradnorm": GradNormWeighting, "dwa": DWAWeighting}
LossWeighting = Annotated[FixedWeighting | UncertaintyWeighting | GradNormWeighting | DWAWeighting,
                          Field(discriminator="name")]


class FaultInjection(Section):
    epochs: list[int] = Field(min_length=1)
    """Epochs (0-based) at whose start the rank raises, once each."""
    rank: int = Field(0, ge=0)
    """Worker rank that raises."""
    marker: str
    """Path prefix of the files recording that a failure fired (<marker>.e<epoch>); an existing
    file stops that failure from firing again."""


class EarlyStopping(Section):
    """Stop when the objective (train.checkpoint_metric, in train.checkpoint_mode) has not improved
    for `patience` epochs; every worker stops at the same epoch, and evaluate/predict default to the
    best checkpoint."""

    patience: int = Field(3, ge=1)
    """Epochs without an improvement of more than min_delta before the run stops."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change of the objective that counts as an improvement (in its units)."""


class TrainConfig(Section):
    epochs: int = Field(5, ge=1)
    """Phase-1 epochs (two_phase adds phase2_epochs)."""
    batch_size: int = Field(512, ge=1)
    """Per-worker batch size; the global batch is batch_size x scaling.num_workers."""
    lr: float = Field(1e-3, gt=0.0)
    """Peak learning rate of AdamW (reached after warmup)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay (not applied to loss-weighting and adaTT parameters)."""
    optimizer: Literal["adamw"] = "adamw"
    """Only AdamW for now (spec §8.2)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Linear warmup then a single cosine decay per step (no restarts: spec §11.10)."""
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction of the steps spent in linear learning-rate warmup."""
    grad_clip: float | None = Field(5.0, gt=0.0)
    """Clip the global gradient norm to this value; None = no clipping."""
    seed: int = 0
    """Seeds model init, data shuffling and dropout (a resumed run draws the same numbers)."""
    amp: Literal["auto", "off", "bf16"] = "auto"
    """auto = bf16 autocast on GPU, off on CPU."""
    compile: bool = False
    """torch.compile the model in place on each worker (keeps state_dict keys); GPU-oriented: on CPU
    the first steps pay minutes of compilation for little gain (docs/performance.md)."""
    shuffle_buffer: int = Field(4096, ge=0)
    """Rows in the per-worker local shuffle buffer (seeded per epoch); 0 disables shuffling."""
    cache_train: bool | Literal["auto"] = "auto"
    """Materialise the packed train split in the Ray object store once (fast epochs) or stream it
    from parquet every epoch (tables larger than memory); auto = cache when the packed split is
    estimated to fit in a fraction of the object store (launch/fit.py, said in the log)."""
    cache_val: bool | Literal["auto"] = "auto"
    """Materialise the packed validation split once (it is read by every rank every epoch); auto
    as for cache_train."""
    max_nonfinite_in_row: int = Field(20, ge=1)
    """Abort after this many consecutive batches with a non-finite loss (each is skipped)."""
    checkpoint_metric: str = "val/loss"
    """Metric that ranks checkpoints (which of them run.checkpoints_to_keep keeps)."""
    checkpoint_mode: Literal["min", "max"] = "min"
    """Whether a lower (min) or higher (max) checkpoint_metric is better."""
    early_stopping: EarlyStopping | None = None
    """Early stopping on checkpoint_metric; None (the default) trains every epoch. Turn it on with
    `train.early_stopping={patience: 3}` (min_delta 0)."""
    fault_injection: FaultInjection | None = None
    """Testing aid: make one rank raise once at an epoch (a marker file records it happened)."""


class ScalingSection(Section):
    num_workers: int | tuple[int, int] = 1
    """Train workers: a fixed count, or [min, max] for elastic training. An elastic run starts once
    `min` workers fit, grows towards `max` as resources appear (Ray checks every minute) and, when a
    worker or its node is lost, restarts with the workers that still fit from its last checkpoint
    (each restart counts against run.max_failures). Work done after that checkpoint is lost."""
    use_gpu: bool = False
    """Give each worker a GPU (and autocast with bf16 when train.amp is auto)."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    """CPUs reserved per worker."""
    gpus_per_worker: float = Field(1.0, gt=0.0)
    """Only used when use_gpu is true."""

    @field_validator("num_workers", mode="before")
    @classmethod
    def _worker_range(cls, v):
        pair = isinstance(v, (list, tuple))
        ints = list(v) if pair else [v]
        if len(ints) != (2 if pair else 1) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ints):
            raise ValueError(f"must be an int or a [min, max] pair of ints, got {v!r}")
        if ints[0] < 1 or ints[-1] < ints[0]:
            raise ValueError(f"needs 1 <= min <= max, got {v!r}" if pair else f"must be >= 1, got {v!r}")
        return tuple(ints) if pair else v

    @property
    def min_workers(self) -> int:
        """Fewest workers the run trains with (num_workers when fixed)."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        """Most workers the run trains with: what resources are sized for (num_workers when fixed)."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]


class RunSection(Section):
    name: str | None = None
    """Deterministic run name; relaunching with the same name resumes the run. Default: experiment name.
    Letters, digits and `._-`, not starting with a dot: it names a folder under run.storage_path and
    is searched for in MLflow."""
    storage_path: str = "runs"
    """Checkpoints, resume and Tune state, reports (and the local MLflow store): a local path (relative to
    the current directory; an error inside a Ray job) or a URI pyarrow opens (s3://, gs://, abfs://,
    file://), which multi-node clusters need. A remote path requires tracking.uri."""
    max_failures: int = Field(2, ge=0)
    """Worker-group failures Ray Train recovers from by restoring the latest checkpoint."""
    controller_failure_limit: int = Field(3, ge=0)
    """Failures of the Train controller itself before the run is abandoned."""
    checkpoints_to_keep: int = Field(2, ge=1)
    """Checkpoints kept on disk, the best by train.checkpoint_metric."""
    min_free_mb: float = Field(200.0, ge=0.0)
    """Free space (MB) the disk holding a local run.storage_path must have when a run starts; less
    is an error before Ray starts (0 disables the check; remote storage is not checked)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if v is not None and not SAFE_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a safe run name: use letters, digits and . _ - only, not starting "
                             f"with a dot (it becomes a folder under run.storage_path and an MLflow search value)")
        return v


class TrackingSection(Section):
    enabled: bool = True
    """Log params, metrics and artifacts to MLflow."""
    uri: str | None = None
    """MLflow tracking URI; None = sqlite under a local run.storage_path (absolute). Use a server on
    clusters (`mlflow server --artifacts-destination s3://...`, so artifacts from any node reach S3)."""
    experiment: str | None = None
    """MLflow experiment name; default: the experiment name."""


class ExperimentConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Experiment name: default run name and MLflow experiment."""
    dataset: DatasetSpec
    """The dataset spec, usually `dataset: path/to/dataset.yaml` (inlined when loaded)."""
    tasks: dict[str, TaskTrainConfig] = {}
    """Per-task overrides keyed by dataset task name; tasks not listed use the defaults."""
    active_tasks: list[str] | None = None
    """Train only these dataset tasks (default: all)."""
    model: ModelConfig = PLEModel()
    """Architecture and its settings; `arch` selects which fields apply."""
    loss_weighting: LossWeighting = FixedWeighting()
    """How task losses are combined; `name` selects the strategy."""
    adatt: AdattSection = AdattSection()
    """adaTT loss-level transfer between tasks."""
    two_phase: TwoPhaseSection = TwoPhaseSection()
    """Optional phase-2 fine-tune of the task side."""
    train: TrainConfig = TrainConfig()
    """Optimisation, schedule, data loading and checkpoint settings."""
    scaling: ScalingSection = ScalingSection()
    """Ray Train workers and their resources."""
    run: RunSection = RunSection()
    """Run name, storage and fault tolerance."""
    tracking: TrackingSection = TrackingSection()
    """MLflow tracking."""

    @model_validator(mode="after")
    def _cross_checks(self):
        errors = []
        known = [t.name for t in self.dataset.tasks]
        for name in self.tasks:
            if name not in known:
                errors.append(f"tasks.{name}: no such task in dataset '{self.dataset.name}' (tasks: {known})")
        for name in self.active_tasks or []:
            if name not in known:
                errors.append(f"active_tasks: '{name}' is not a dataset task (tasks: {known})")
        for t in self.dataset.tasks:
            loss = self.tasks.get(t.name, TaskTrainConfig()).loss
            if loss is not None and loss not in LOSSES_BY_TYPE[t.type]:
                errors.append(
                    f"tasks.{t.name}.loss: '{loss}' does not fit a {t.type} task (valid: {list(LOSSES_BY_TYPE[t.type])})"
                )
            if t.name in self.tasks and self.tasks[t.name].pos_weight is not None and (
                    t.type != "binary" or (loss or "bce") != "bce"):
                errors.append(f"tasks.{t.name}.pos_weight: only for binary tasks with loss bce (task '{t.name}' is "
                              f"{t.type}, loss {loss or LOSSES_BY_TYPE[t.type][0]}); focal has focal_alpha instead")
        if self.model.arch == "single_task" and self.loss_weighting.name == "gradnorm":
            errors.append("loss_weighting.name: gradnorm needs shared parameters; model.arch=single_task has none")
        if self.model.arch == "single_task" and self.adatt.enabled:
            errors.append("adatt.enabled: adaTT measures gradients on shared parameters; model.arch=single_task has none")
        if self.adatt.enabled and self.adatt.affinity_on == "representation" and self.model.arch != "ple_hetero":
            errors.append(f"adatt.affinity_on: representation needs model.arch=ple_hetero (the one model with "
                          f"a single shared representation); got {self.model.arch}. Use parameters or expert_heads")
        if self.adatt.enabled and self.adatt.freeze_epoch is not None and self.adatt.freeze_epoch >= self.train.epochs:
            errors.append(f"adatt.freeze_epoch: {self.adatt.freeze_epoch} must be < train.epochs "
                          f"({self.train.epochs}), or the frozen phase never runs")
        if self.model.arch == "single_task" and self.model.sae.enabled:
            errors.append("model.sae.enabled: the SAE reads the shared representation; model.arch=single_task has none")
        if self.two_phase.enabled and self.model.arch != "ple_hetero":
            errors.append(f"two_phase.enabled: needs model.arch=ple_hetero (got {self.model.arch})")
        # Edges and priors may name tasks outside active_tasks (they are then skipped), not unknown ones.
        if isinstance(self.model, HeteroPLEModel):
            for i, e in enumerate(self.model.logit_transfer.edges):
                for end in ("source", "target"):
                    if getattr(e, end) not in known:
                        errors.append(f"model.logit_transfer.edges.{i}.{end}: '{getattr(e, end)}' is not a dataset task")
            for t in self.model.gate.domain_prior:
                if t not in known:
                    errors.append(f"model.gate.domain_prior.{t}: not a dataset task")
        groups = {x.group for x in self.dataset.tasks}
        for g in self.adatt.intra_strength:
            if g not in groups:
                errors.append(f"adatt.intra_strength.{g}: not a task group of the dataset (groups: {sorted(groups)})")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    # ---- derived values -------------------------------------------------------------------
    def task_names(self) -> list[str]:
        return list(self.active_tasks) if self.active_tasks else [t.name for t in self.dataset.tasks]

    def task_settings(self, name: str) -> TaskTrainConfig:
        return self.tasks.get(name, TaskTrainConfig())

    def task_loss(self, name: str) -> str:
        return self.task_settings(name).loss or LOSSES_BY_TYPE[self.dataset.task(name).type][0]

    def total_epochs(self) -> int:
        """Phase-1 epochs (train.epochs) plus phase-2 epochs when two-phase training is on."""
        return self.train.epochs + (self.two_phase.phase2_epochs if self.two_phase.enabled else 0)

    def run_name(self) -> str:
        return self.run.name or re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)

    def weighting_params(self) -> dict:
        """Constructor arguments of the configured loss-weighting strategy."""
        return self.loss_weighting.model_dump(exclude={"name"})

    def global_batch_size(self) -> int:
        """At full scale; an elastic run that lost workers steps on batch_size x its world size."""
        return self.train.batch_size * self.scaling.max_workers
