"""The one experiment schema, shared by train, evaluate, tune and ablation jobs.

Strict pydantic v2 models: unknown keys are errors, choices are Literals, values are frozen.
Values that follow from others are computed (methods), not configured.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ple_adatt.config.dataset import DatasetSpec, ExpertName, Section

LossName = Literal["focal", "bce", "ce", "huber", "mse", "infonce"]
# Which losses make sense for which task type (the first is the default).
LOSSES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "binary": ("bce", "focal"),
    "multiclass": ("ce", "focal"),
    "regression": ("huber", "mse"),
    "contrastive": ("infonce", "ce"),
}


class TaskTrainConfig(Section):
    """Per-task training settings; the task itself (type, label) lives in the dataset spec."""

    loss: LossName | None = None
    """None picks the default for the task type (binary: bce, multiclass: ce, regression: huber)."""
    weight: float = Field(1.0, ge=0.0)
    """Fixed task weight, applied exactly once (inside the weighting strategy)."""
    focal_alpha: float = Field(0.25, gt=0.0, lt=1.0)
    """Focal alpha: weight of the positive class (binary) or of every class (multiclass)."""
    focal_gamma: float = Field(2.0, ge=0.0)
    huber_delta: float = Field(1.0, gt=0.0)


class ExpertsSection(Section):
    """ple_hetero only: the seven heterogeneous shared experts (spec §3)."""

    use: list[ExpertName] = ["deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"]
    """Experts to build, in block order; an expert no feature group routes to is left out."""
    disabled: list[ExpertName] = []
    """Leave-one-out switch: experts listed here are not built even if routed."""
    required: list[ExpertName] = []
    """Experts that must receive input; a clear error if no group routes to one of them."""
    out_dim: int = Field(64, ge=4)
    hgcn_out_dim: int = Field(128, ge=4)
    lr: dict[ExpertName, float] = {}
    """Optional per-expert learning rates (parameter groups); others use train.lr."""
    weight_decay: dict[ExpertName, float] = {}


class GateSection(Section):
    """ple_hetero only: the CGC gate over the shared expert blocks (spec §4, §11.1)."""

    kind: Literal["attention", "layer", "both"] = "attention"
    """attention = G1 CGCAttention (recommended); layer = paper-exact stacked CGCLayers; both."""
    activation: Literal["softmax", "sigmoid"] = "softmax"
    dim_normalize: bool = True
    """Scale each block by sqrt(mean_dim / d_i) so a 128D expert does not dominate."""
    domain_prior: dict[str, list[ExpertName]] = {}
    """task -> preferred experts; their gate logits start at +1, the rest at -1."""
    entropy_lambda: float = Field(0.01, ge=0.0)
    levels: int = Field(1, ge=1)
    """CGCLayer levels (kind: layer/both)."""


class BasketSection(Section):
    """ple_hetero only: group task-expert basket with soft cluster routing (spec §5.1)."""

    enabled: bool = True
    per_cluster_legacy: bool = False
    """The seed's per-(task x cluster) MLPs, for the parameter-count comparison."""
    hidden: list[int] = [128, 64]
    out_dim: int = Field(32, ge=1)
    cluster_dim: int = Field(32, ge=1)
    skip: bool = False
    """Towers also read the task's own gated representation (and HMM projection) next to the basket
    output. Off = the seed's layout, where a group's tasks share one 32-D summary that differs
    between them only through their gate weights."""


class TransferEdge(Section):
    source: str
    target: str
    strength: float = Field(0.5, ge=0.0)


class LogitTransferSection(Section):
    """ple_hetero only: residual logit transfer along a task DAG (spec §5.2)."""

    enabled: bool = False
    edges: list[TransferEdge] = []
    detach_source: bool = False


class ModelConfig(Section):
    arch: Literal["shared_bottom", "mmoe", "ple", "single_task", "ple_hetero"] = "ple"
    """shared_bottom | mmoe | ple (CGC levels with MLP experts) | single_task (one net per task) |
    ple_hetero (the seed's PLE: heterogeneous experts, CGC gate, HMM, basket, logit transfer)."""
    embedding_dim: int = Field(8, ge=1)
    """Width of each categorical embedding."""
    expert_hidden: list[int] = [128, 64]
    """MLP expert (and shared bottom) layer widths; the last is the expert output width D."""
    num_shared_experts: int = Field(2, ge=1)
    num_task_experts: int = Field(1, ge=0)
    """PLE only: task-specific experts per task."""
    num_experts: int = Field(4, ge=1)
    """MMoE only."""
    num_levels: int = Field(1, ge=1)
    """PLE only: stacked CGC levels (1 = CGC)."""
    tower_hidden: list[int] = [64, 32]
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    experts: ExpertsSection = ExpertsSection()
    gate: GateSection = GateSection()
    basket: BasketSection = BasketSection()
    logit_transfer: LogitTransferSection = LogitTransferSection()
    contrastive_dim: int = Field(64, ge=2)
    contrastive_tau: float = Field(0.07, gt=0.0)
    """Contrastive towers: embedding width and InfoNCE temperature (ple_hetero)."""


class AdattSection(Section):
    """adaTT: task-affinity-driven loss transfer (spec §7). Defaults from spec §7.6; off by default
    as in the seed's final production config."""

    enabled: bool = False
    transfer_lambda: float = Field(0.1, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0)
    neg_threshold: float = Field(-0.1, ge=-1.0, le=1.0)
    max_transfer_ratio: float = Field(0.5, ge=0.0)
    grad_interval: int = Field(10, ge=1)
    prior_blend_start: float = Field(0.5, ge=0.0, le=1.0)
    prior_blend_end: float = Field(0.1, ge=0.0, le=1.0)
    inter_strength: float = Field(0.3, ge=0.0)
    intra_strength: dict[str, float] = {}
    """task group -> intra-group prior strength (0.5 if missing)."""
    warmup_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    freeze_fraction: float = Field(0.8, gt=0.0, le=1.0)
    """Phase boundaries as fractions of the phase-1 epochs, so short runs keep all three phases."""
    affinity_on: Literal["parameters", "expert_heads", "representation"] = "expert_heads"
    """Task gradients w.r.t. every shared-expert parameter (spec §7.1; one backward through all
    experts per task), each expert's output head (GradNorm's last shared layer; the default: +8 %
    step time at grad_interval 10 on the shipped model, docs/adatt.md) or the shared representation (cheapest)."""

    @model_validator(mode="after")
    def _order(self):
        if self.freeze_fraction <= self.warmup_fraction:
            raise ValueError(f"freeze_fraction ({self.freeze_fraction}) must be > warmup_fraction ({self.warmup_fraction})")
        return self


class TwoPhaseSection(Section):
    """Phase 2 (spec §8.1): freeze shared experts + CGC, disable adaTT, fine-tune basket and towers
    with a fresh optimizer and schedule."""

    enabled: bool = False
    phase2_epochs: int = Field(2, ge=1)
    phase2_lr: float | None = Field(None, gt=0.0)
    """None = train.lr."""

class FixedWeighting(Section):
    """Fixed task weights only (tasks.<name>.weight)."""

    name: Literal["fixed"] = "fixed"


class UncertaintyWeighting(Section):
    """Kendall et al. (CVPR 2018): sum_k w_k (exp(-s_k) L_k + s_k), learnable s_k clamped to [-4, 4]."""

    name: Literal["uncertainty"]


class GradNormWeighting(Section):
    """Chen et al. (ICML 2018): task weights steered so gradient norms on shared params balance."""

    name: Literal["gradnorm"]
    alpha: float = Field(1.5, ge=0.0)
    """Restoring-force asymmetry; 0 = equal gradient norms."""
    lr: float = Field(0.025, gt=0.0)
    interval: int = Field(1, ge=1)
    """Update the weights every `interval` steps (each update costs one backward per task)."""


class DWAWeighting(Section):
    """Liu et al. (CVPR 2019): weights from epoch-level loss ratios, K softmax(r / temperature)."""

    name: Literal["dwa"]
    temperature: float = Field(2.0, gt=0.0)


LossWeighting = Annotated[FixedWeighting | UncertaintyWeighting | GradNormWeighting | DWAWeighting,
                          Field(discriminator="name")]


class FaultInjection(Section):
    epochs: list[int] = Field(min_length=1)
    """Epochs (0-based) at whose start the rank raises, once each."""
    rank: int = Field(0, ge=0)
    marker: str
    """Path prefix of the files recording that a failure fired (<marker>.e<epoch>); an existing
    file stops that failure from firing again."""


class TrainConfig(Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(512, ge=1)
    """Per-worker batch size; the global batch is batch_size x scaling.num_workers."""
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    optimizer: Literal["adamw"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    """Linear warmup then a single cosine decay per step (no restarts: spec §11.10)."""
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    seed: int = 0
    amp: Literal["auto", "off", "bf16"] = "auto"
    """auto = bf16 autocast on GPU, off on CPU."""
    shuffle_buffer: int = Field(4096, ge=0)
    """Rows in the per-worker local shuffle buffer (seeded per epoch); 0 disables shuffling."""
    cache_train: bool = False
    """Materialise the packed train split in the Ray object store once (fast epochs for data that
    fits in it); default streams from parquet every epoch, for tables larger than memory."""
    cache_val: bool = True
    """Materialise the packed validation split once (it is read by every rank every epoch)."""
    max_nonfinite_in_row: int = Field(20, ge=1)
    """Abort after this many consecutive batches with a non-finite loss (each is skipped)."""
    checkpoint_metric: str = "val/loss"
    checkpoint_mode: Literal["min", "max"] = "min"
    fault_injection: FaultInjection | None = None
    """Testing aid: make one rank raise once at an epoch (a marker file records it happened)."""


class ScalingSection(Section):
    num_workers: int | tuple[int, int] = 1
    """Train workers: a fixed count, or [min, max] for elastic training. An elastic run starts once
    `min` workers fit, grows towards `max` as resources appear (Ray checks every minute) and, when a
    worker or its node is lost, restarts with the workers that still fit from its last checkpoint
    (each restart counts against run.max_failures). Work done after that checkpoint is lost."""
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
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
    """Deterministic run name; relaunching with the same name resumes the run. Default: experiment name."""
    storage_path: str = "runs"
    """Checkpoints and the local MLflow store; relative paths resolve against the current directory."""
    max_failures: int = Field(2, ge=0)
    controller_failure_limit: int = Field(3, ge=0)
    checkpoints_to_keep: int = Field(2, ge=1)


class TrackingSection(Section):
    enabled: bool = True
    uri: str | None = None
    """MLflow tracking URI; None = sqlite under run.storage_path (absolute). Use a server on clusters."""
    experiment: str | None = None
    """MLflow experiment name; default: the experiment name."""


class ExperimentConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetSpec
    tasks: dict[str, TaskTrainConfig] = {}
    """Per-task overrides keyed by dataset task name; tasks not listed use the defaults."""
    active_tasks: list[str] | None = None
    """Train only these dataset tasks (default: all)."""
    model: ModelConfig = ModelConfig()
    loss_weighting: LossWeighting = FixedWeighting()
    adatt: AdattSection = AdattSection()
    two_phase: TwoPhaseSection = TwoPhaseSection()
    train: TrainConfig = TrainConfig()
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    tracking: TrackingSection = TrackingSection()

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
        if self.model.arch == "single_task" and self.loss_weighting.name == "gradnorm":
            errors.append("loss_weighting.name: gradnorm needs shared parameters; model.arch=single_task has none")
        if self.model.arch == "single_task" and self.adatt.enabled:
            errors.append("adatt.enabled: adaTT measures gradients on shared parameters; model.arch=single_task has none")
        if self.adatt.enabled and self.adatt.affinity_on == "representation" and self.model.arch != "ple_hetero":
            errors.append(f"adatt.affinity_on: representation needs model.arch=ple_hetero (the one model with "
                          f"a single shared representation); got {self.model.arch}. Use parameters or expert_heads")
        if self.two_phase.enabled and self.model.arch != "ple_hetero":
            errors.append(f"two_phase.enabled: needs model.arch=ple_hetero (got {self.model.arch})")
        # Edges and priors may name tasks outside active_tasks (they are then skipped), not unknown ones.
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
