"""Dataset spec: the YAML contract that describes a parquet table to the platform.

Format and batch contract: docs/dataset-spec.md. This module only validates the *shape* of the
spec; `ple_adatt.data.validate` checks it against the parquet files before Ray starts.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EXPERT_NAMES = ("mlp", "deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport")
ExpertName = Literal["mlp", "deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"]
TaskType = Literal["binary", "multiclass", "regression", "contrastive"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, and every float
    field (in any section, dict values included) must be finite: inf/nan are refused naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


class NumericGroup(Section):
    kind: Literal["numeric"]
    """Selects a numeric group."""
    columns: list[str] = Field(min_length=1)
    """Scalar numeric columns packed into feat/<group> [B, n], standardised with train stats."""
    standardize: bool = True
    """Standardise each column with the train split's mean and std."""
    log1p: bool = False
    """Apply sign(x) * log1p(|x|) before standardising (heavy-tailed money columns)."""
    experts: list[ExpertName] = ["mlp"]
    """Experts this group is routed to (ple_hetero; the MLP baselines read every group)."""


class CategoricalGroup(Section):
    kind: Literal["categorical"]
    """Selects a categorical group."""
    columns: list[str] = Field(min_length=1)
    """Scalar string/int columns mapped to cat/<group> [B, n] int64; 0 = unseen or null."""
    max_vocab: int = Field(10_000, ge=2)
    """Most frequent values kept per column (train split); the rest map to 0."""
    experts: list[ExpertName] = ["mlp"]
    """Experts this group is routed to (ple_hetero; the MLP baselines read every group)."""


class ListGroup(Section):
    kind: Literal["list"]
    """Selects a list (vector or sequence) group."""
    column: str
    """One fixed-size-list float column, reshaped to `shape` per row."""
    shape: list[int] = Field(min_length=1, max_length=2)
    """[D] or [T, F]."""
    standardize: bool = True
    """Per-feature (last axis) mean/std from the train split."""
    experts: list[ExpertName] = ["mlp"]
    """Experts this group is routed to (ple_hetero; the MLP baselines read every group)."""

    @model_validator(mode="after")
    def _positive_shape(self):
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"shape must be positive integers, got {self.shape}")
        return self


FeatureGroup = Annotated[NumericGroup | CategoricalGroup | ListGroup, Field(discriminator="kind")]


class DatasetTask(Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    """Task name used everywhere else (tasks:, metrics, edges, priors)."""
    type: TaskType
    """binary | multiclass | regression | contrastive: picks loss, head and metrics."""
    label: str
    """Label column; null rows are masked out of the loss and the metrics."""
    num_classes: int | None = Field(None, ge=2)
    """Required for multiclass and contrastive tasks."""
    group: str = "default"
    """Task group (group encoder basket, adaTT prior)."""
    hmm_mode: str | None = None
    """HMM mode (a key of `hmm`) whose projection this task reads (ple_hetero)."""
    oracle: str | None = None
    """Optional column with the true P(y=1) / class probabilities / E[y] (never a model input)."""

    @model_validator(mode="after")
    def _classes(self):
        needs = self.type in ("multiclass", "contrastive")
        if needs and self.num_classes is None:
            raise ValueError(f"task '{self.name}': num_classes is required for type {self.type}")
        if not needs and self.num_classes is not None:
            raise ValueError(f"task '{self.name}': num_classes is only valid for multiclass/contrastive")
        return self


class Splits(Section):
    train: str | list[str]
    """Training split: a parquet file, directory or glob (or a list of them)."""
    val: str | list[str]
    """Validation split (early stopping, checkpoint ranking, tuning objective)."""
    test: str | list[str] | None = None
    """Optional held-out split, read only by evaluation."""


class DatasetSpec(Section):
    name: str
    """Dataset name (logged with every run)."""
    splits: Splits
    """Parquet file, directory or glob per split, local or a URI (s3://bucket/data/train/, no globs);
    relative paths resolve against the YAML's folder (a URI folder for a YAML read from a URI)."""
    id_column: str | None = None
    """Optional row id column, carried through to predictions (never a model input)."""
    groups: dict[str, FeatureGroup] = Field(min_length=1)
    """Feature groups by name: how columns are packed into model inputs."""
    cluster_probs: str | None = None
    """Optional fixed-size-list column [K]: soft cluster posterior (GMM)."""
    hmm: dict[str, str] = {}
    """Optional HMM mode -> fixed-size-list column [16]; a null row means 'missing'."""
    tasks: list[DatasetTask] = Field(min_length=1)
    """The tasks (labels) the dataset provides."""
    nonfinite: Literal["impute", "error"] = "impute"
    """Feature values that are NaN, +-inf or beyond float32 range: `impute` packs them as 0 (counted
    per column and split in the log and as MLflow params data.nonfinite.<split>.<column>); `error`
    refuses the data before Ray starts, naming column, split and count."""

    @model_validator(mode="after")
    def _consistent(self):
        errors = []
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            errors.append(f"duplicate task names {dup}: task names must be unique")
        for t in self.tasks:
            if t.hmm_mode is not None and t.hmm_mode not in self.hmm:
                errors.append(f"task '{t.name}': hmm_mode '{t.hmm_mode}' is not one of the hmm modes {sorted(self.hmm)}")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def task(self, name: str) -> DatasetTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task '{name}'; tasks: {[t.name for t in self.tasks]}")

    def input_columns(self) -> list[str]:
        """Every column the model reads (features + side inputs), in a stable order."""
        cols: list[str] = []
        for g in self.groups.values():
            cols += g.columns if hasattr(g, "columns") else [g.column]
        if self.cluster_probs:
            cols.append(self.cluster_probs)
        cols += list(self.hmm.values())
        return cols

    def label_columns(self) -> list[str]:
        return [t.label for t in self.tasks]

    def oracle_columns(self) -> list[str]:
        return [t.oracle for t in self.tasks if t.oracle]
