"""The one experiment schema, shared by train, evaluate, tune and ablation jobs.

Strict pydantic v2 models: unknown keys are errors, choices are Literals, values are frozen.
Values that follow from others are computed (methods), not configured.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ple_adatt.config.dataset import DatasetSpec, Section

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


class ModelConfig(Section):
    arch: Literal["shared_bottom", "mmoe", "ple", "single_task"] = "ple"
    """shared_bottom | mmoe | ple (CGC levels with MLP experts) | single_task (one net per task)."""
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
    epoch: int = Field(ge=0)
    rank: int = Field(0, ge=0)
    marker: str
    """File created when the failure fires; if it exists the failure does not fire again."""


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
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0)
    """Only used when use_gpu is true."""


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

    def run_name(self) -> str:
        return self.run.name or re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)

    def weighting_params(self) -> dict:
        """Constructor arguments of the configured loss-weighting strategy."""
        return self.loss_weighting.model_dump(exclude={"name"})

    def global_batch_size(self) -> int:
        return self.train.batch_size * self.scaling.num_workers
