"""Train-split statistics (scalers, vocabularies) and the batch packer.

`fit_preprocessing` streams the train split once, column-projected, in record batches (bounded
memory). The resulting `PreprocessState` is plain JSON: it travels to workers in the train-loop
config, is saved in every checkpoint, and is reused for val/test/inference.

`pack(table, spec, state, tasks)` turns a pyarrow batch into the flat dict of numpy arrays
described in docs/dataset-spec.md (shapes with B = rows in the batch).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.data.files import iter_batches, parquet_dataset, split_files
from ple_adatt.data.quality import FeatureReport, count_nonfinite
from ple_adatt.data.targets import LabelStats, standardise_label

EPS = 1e-6
F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class PreprocessState:
    """Everything fitted on the train split. JSON-serialisable (asdict / from_dict)."""

    mean: dict[str, list[float]] = field(default_factory=dict)
    """group -> per-feature mean (numeric: per column; list: per last-axis feature)."""
    std: dict[str, list[float]] = field(default_factory=dict)
    vocab: dict[str, list[list[str]]] = field(default_factory=dict)
    """categorical group -> per column, the kept values (index i+1; 0 = unseen/null)."""
    cluster_k: int | None = None
    train_rows: int = 0
    targets: dict[str, dict] = field(default_factory=dict)
    """task -> train-split label statistics (data/targets.py): base rate, class priors, regression
    mean/std (regression labels are standardised with them; outputs are mapped back)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessState":
        return cls(**d)

    def cardinalities(self, group: str) -> list[int]:
        """Embedding table sizes per categorical column (vocab + the 0 slot)."""
        return [len(v) + 1 for v in self.vocab[group]]


def _as_fixed_list(arr: pa.ChunkedArray | pa.Array, size: int) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type) or arr.type.value_type != pa.float32():
        arr = arr.cast(pa.list_(pa.float32(), size))
    return arr


def list_to_numpy(arr, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size-list column -> (values float32 [B, *shape] with nulls as 0, present bool [B])."""
    size = math.prod(shape)
    arr = _as_fixed_list(arr, size)
    n = len(arr)
    flat = arr.values.slice(arr.offset * size, n * size)
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).reshape(n, *shape)
    present = ~arr.is_null().to_numpy(zero_copy_only=False)
    if not present.all():
        values = values.copy()
        values[~present] = 0.0
    return values, present


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def fit_preprocessing(spec: DatasetSpec, batch_rows: int = 65_536, report: FeatureReport | None = None
                      ) -> PreprocessState:
    """One streaming pass over the train split: feature means/stds, vocabularies, label statistics
    (data/targets.py) and, when `report` is given, the train split's data-quality counts
    (data/quality.py: non-finite values, categories outside the kept vocabulary), so a run's start
    reads the train split once."""
    files = split_files(spec, "train")
    cols = [c for g in spec.groups.values() for c in (g.columns if g.kind != "list" else [g.column])]
    labels = LabelStats(spec)
    nonfinite = {c: 0 for g in spec.groups.values() if g.kind != "categorical"
                 for c in (g.columns if g.kind == "numeric" else [g.column])} if report is not None else {}
    sums: dict[str, np.ndarray] = {}
    sqs: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    vocab_counts: dict[str, list[Counter]] = {
        name: [Counter() for _ in g.columns] for name, g in spec.groups.items() if g.kind == "categorical"
    }
    rows = 0
    # iter_batches: one row group decoded at a time (the dataset scanner's pre-buffering grew with the table)
    for batch in iter_batches(files, list(dict.fromkeys(cols + labels.columns)), batch_rows):
        rows += batch.num_rows
        labels.add(batch)
        for c in nonfinite:
            nonfinite[c] += count_nonfinite(batch.column(c))
        for name, g in spec.groups.items():
            if g.kind == "categorical":
                for i, c in enumerate(g.columns):
                    vc = pc.value_counts(batch.column(c).cast(pa.string()))
                    for v, k in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
                        if v is not None:
                            vocab_counts[name][i][v] += k
                continue
            if g.kind == "numeric":
                x = np.stack([batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in g.columns], 1)
                x = signed_log1p(x.astype(np.float64)) if g.log1p else x.astype(np.float64)
            else:
                v, present = list_to_numpy(batch.column(g.column), g.shape)
                x = v[present].reshape(-1, g.shape[-1]).astype(np.float64)
            ok = np.isfinite(x) & (np.abs(x) <= F32_MAX)  # beyond float32 the packer sees inf and packs 0
            x = np.where(ok, x, 0.0)
            sums[name] = sums.get(name, 0) + x.sum(0)
            sqs[name] = sqs.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + ok.sum(0)
    state = PreprocessState(train_rows=rows, targets=labels.result())
    unseen = {}
    for name, g in spec.groups.items():
        if g.kind == "categorical":
            state.vocab[name] = [[v for v, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[: g.max_vocab - 1]]
                                 for c in vocab_counts[name]]
            for col, counter, kept in zip(g.columns, vocab_counts[name], state.vocab[name]):
                unseen[col] = sum(counter.values()) - sum(counter[v] for v in kept)  # past max_vocab
        elif name in sums:
            n = np.maximum(counts[name], 1)
            mean = sums[name] / n
            var = np.maximum(sqs[name] / n - mean**2, 0.0)
            std = np.where(np.sqrt(var) < EPS, 1.0, np.sqrt(var))  # constant features pass through centred
            state.mean[name], state.std[name] = mean.tolist(), std.tolist()
    if spec.cluster_probs:
        first = parquet_dataset(files[:1]).head(1, columns=[spec.cluster_probs]).column(0)
        state.cluster_k = first.type.list_size if pa.types.is_fixed_size_list(first.type) else len(first[0].as_py())
    if report is not None:
        report.nonfinite["train"], report.unseen["train"] = nonfinite, unseen
    return state


class Packer:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")`: pyarrow batch -> dict of numpy."""

    def __init__(self, spec: DatasetSpec, state: PreprocessState, tasks: list[str], with_ids: bool = False,
                 with_oracles: bool = False):
        self.spec, self.state, self.tasks = spec, state, tasks
        self.with_ids, self.with_oracles = with_ids, with_oracles
        self._value_sets = {name: [pa.array(v, pa.string()) for v in vocab] for name, vocab in state.vocab.items()}

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        spec, st = self.spec, self.state
        for name, g in spec.groups.items():
            if g.kind == "categorical":
                idx = [pc.index_in(table.column(c).cast(pa.string()), value_set=vs).to_numpy(zero_copy_only=False)
                       for c, vs in zip(g.columns, self._value_sets[name])]
                # index_in gives null for unseen values and nulls -> slot 0
                out[f"cat/{name}"] = np.stack([np.nan_to_num(i.astype(np.float64), nan=-1).astype(np.int64) + 1 for i in idx], 1)
                continue
            if g.kind == "numeric":
                x = np.stack([table.column(c).cast(pa.float32()).to_numpy(zero_copy_only=False) for c in g.columns], 1)
                x = signed_log1p(x) if g.log1p else x.astype(np.float32, copy=False)
            else:
                x, _ = list_to_numpy(table.column(g.column), g.shape)
            if g.standardize:
                x = (x - np.asarray(st.mean[name], np.float32)) / np.asarray(st.std[name], np.float32)
            out[f"feat/{name}"] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
        if spec.cluster_probs:
            out["cluster_probs"], _ = list_to_numpy(table.column(spec.cluster_probs), [st.cluster_k])
        for mode, c in spec.hmm.items():
            out[f"hmm/{mode}"], out[f"present/hmm/{mode}"] = list_to_numpy(table.column(c), [16])
        for name in self.tasks:
            task = spec.task(name)
            col = table.column(task.label)
            mask = ~col.is_null().to_numpy(zero_copy_only=False)
            if task.type in ("multiclass", "contrastive"):
                y = col.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False)
            else:
                y = col.cast(pa.float32()).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
                y = standardise_label(st.targets.get(name), y)  # regression: train-split standard units
            out[f"label/{name}"], out[f"mask/{name}"] = y, mask
            if self.with_oracles and task.oracle:
                oc = table.column(task.oracle)
                if task.type == "multiclass":
                    out[f"oracle/{name}"], _ = list_to_numpy(oc, [task.num_classes])
                else:
                    out[f"oracle/{name}"] = oc.cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        if self.with_ids and spec.id_column:
            out["id"] = table.column(spec.id_column).to_numpy(zero_copy_only=False)
        return out


def packed_batches(spec: DatasetSpec, state: PreprocessState, tasks: list[str], split: str,
                   batch_rows: int = 8192):
    """A split read on this process (no Ray), one row group at a time (files.iter_batches), packed
    with labels and oracles: yields the Packer's {name: array} per non-empty batch, in file order.
    For evaluate/predict-style passes and the GBDT reference's feature matrix."""
    packer = Packer(spec, state, tasks, with_oracles=True)
    cols = list(dict.fromkeys(spec.input_columns() + [spec.task(t).label for t in tasks]
                              + [spec.task(t).oracle for t in tasks if spec.task(t).oracle]))
    for rb in iter_batches(split_files(spec, split), cols, batch_rows):
        if rb.num_rows:
            yield packer(pa.Table.from_batches([rb]))


def input_shapes(spec: DatasetSpec, state: PreprocessState) -> dict[str, dict]:
    """What the model builder needs to know about each input key (no data needed)."""
    shapes: dict[str, dict] = {}
    for name, g in spec.groups.items():
        if g.kind == "categorical":
            shapes[f"cat/{name}"] = {"kind": "categorical", "cardinalities": state.cardinalities(name),
                                     "experts": list(g.experts)}
        elif g.kind == "numeric":
            shapes[f"feat/{name}"] = {"kind": "numeric", "shape": [len(g.columns)], "experts": list(g.experts)}
        else:
            shapes[f"feat/{name}"] = {"kind": "list", "shape": list(g.shape), "experts": list(g.experts)}
    return shapes
