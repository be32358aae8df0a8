"""Resolving a split's parquet paths and checking a dataset spec against the files' schemas.

Everything here runs in the driver before Ray starts and reads parquet *metadata* (plus the
label columns for range checks), never the feature data.
"""
from __future__ import annotations

import glob
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ple_adatt.config import storage
from ple_adatt.config.dataset import DatasetSpec


class DataError(ValueError):
    """A dataset problem found before training; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("dataset problems:\n" + "\n".join(f"  - {p}" for p in problems))


def resolve_files(paths: str | list[str]) -> list[str]:
    """A file, a directory (all *.parquet below it) or a glob -> sorted list of files. URIs
    (s3://bucket/data/train) name a file or a folder (no globs) and stay URIs."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, str) else paths:
        if storage.is_uri(p):
            kind = storage.file_type(p)
            out += [p] if kind == storage.pafs.FileType.File else storage.list_files(p, ".parquet")
            continue
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*.parquet"))
        elif any(c in p for c in "*?["):
            out += sorted(glob.glob(p, recursive=True))
        elif path.is_file():
            out.append(str(path))
    return out


def split_files(spec: DatasetSpec, split: str) -> list[str]:
    paths = getattr(spec.splits, split)
    if paths is None:
        raise DataError([f"splits.{split}: not declared in dataset '{spec.name}'"])
    files = resolve_files(paths)
    if not files:
        raise DataError([f"splits.{split}: {paths!r} matches no parquet files"])
    return files


def parquet_dataset(files: list[str]) -> pads.Dataset:
    """A pyarrow dataset over resolved files, local or URIs (pyarrow wants one filesystem and
    bare paths for a list of URIs)."""
    fs, _ = storage.filesystem(files[0])
    return pads.dataset([storage.filesystem(f)[1] for f in files], format="parquet", filesystem=fs)


def iter_batches(files: list[str], columns: list[str], batch_rows: int = 65_536):
    """Record batches of `columns`, file by file and row group by row group (local or URIs).

    Bounded memory for driver-side scans: at most one row group is decoded at a time. The dataset
    scanner (`parquet_dataset(...).scanner`) pre-buffers column chunks and kept up to 0.5 GB of
    Arrow memory alive on a 2-file, 1M-row table even with read-ahead off (issue 16)."""
    for f in files:
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as src:
            yield from pq.ParquetFile(src).iter_batches(batch_size=batch_rows, columns=columns)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_categorical(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_boolean(t) or pa.types.is_dictionary(t))


def _list_size_problem(t: pa.DataType, size: int) -> str | None:
    if pa.types.is_fixed_size_list(t):
        if t.list_size != size:
            return f"has list size {t.list_size}, expected {size}"
        inner = t.value_type
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type  # variable lists are checked row by row when packing
    else:
        return f"has type {t}, expected a (fixed-size) list of floats of size {size}"
    return None if _is_number(inner) else f"has list values of type {inner}, expected numbers"


def check_dataset(spec: DatasetSpec, splits: tuple[str, ...] = ("train", "val"), tasks: list[str] | None = None) -> dict[str, int]:
    """Validate every declared column against every file of the given splits; returns rows per split.

    Raises DataError listing all problems: missing/unreadable files, empty splits, missing
    columns, wrong dtypes, label values out of range.
    """
    problems: list[str] = []
    rows: dict[str, int] = {}
    task_list = [t for t in spec.tasks if tasks is None or t.name in tasks]
    for split in splits:
        try:
            files = split_files(spec, split)
        except DataError as e:
            problems += e.problems
            continue
        n = 0
        for f in files:
            try:
                meta = pq.read_metadata(f)
                schema = meta.schema.to_arrow_schema()
            except Exception as e:  # noqa: BLE001 - any read failure is reported with its file
                problems.append(f"splits.{split}: cannot read parquet file {f}: {e}")
                continue
            n += meta.num_rows
            problems += [f"{f}: {p}" for p in _schema_problems(spec, schema, task_list)]
        rows[split] = n
        if n == 0 and not any(p.startswith(f"splits.{split}") for p in problems):
            problems.append(f"splits.{split}: {len(files)} file(s) but 0 rows; an empty split cannot be used")
    if not problems:
        for split in splits:
            problems += _label_range_problems(spec, split, task_list)
    if problems:
        raise DataError(_dedupe(problems))
    return rows


def _schema_problems(spec: DatasetSpec, schema: pa.Schema, tasks) -> list[str]:
    out: list[str] = []

    def col(name: str, where: str):
        if name not in schema.names:
            out.append(f"column '{name}' ({where}) is missing; columns: {schema.names[:30]}")
            return None
        return schema.field(name).type

    for gname, g in spec.groups.items():
        if g.kind == "numeric":
            for c in g.columns:
                t = col(c, f"groups.{gname}")
                if t is not None and not _is_number(t):
                    out.append(f"column '{c}' (groups.{gname}, numeric) has type {t}, expected a number")
        elif g.kind == "categorical":
            for c in g.columns:
                t = col(c, f"groups.{gname}")
                if t is not None and not _is_categorical(t):
                    out.append(f"column '{c}' (groups.{gname}, categorical) has type {t}, expected string/int/bool")
        else:
            t = col(g.column, f"groups.{gname}")
            if t is not None and (p := _list_size_problem(t, math.prod(g.shape))):
                out.append(f"column '{g.column}' (groups.{gname}, shape {g.shape}) {p}")
    if spec.cluster_probs:
        t = col(spec.cluster_probs, "cluster_probs")
        if t is not None and (p := _list_size_problem(t, t.list_size if pa.types.is_fixed_size_list(t) else 1)):
            out.append(f"column '{spec.cluster_probs}' (cluster_probs) {p}")
    for mode, c in spec.hmm.items():
        t = col(c, f"hmm.{mode}")
        if t is not None and (p := _list_size_problem(t, 16)):
            out.append(f"column '{c}' (hmm.{mode}) {p}")
    if spec.id_column:
        col(spec.id_column, "id_column")
    for task in tasks:
        t = col(task.label, f"label of task '{task.name}'")
        if t is None:
            continue
        if task.type in ("multiclass", "contrastive") and not pa.types.is_integer(t):
            out.append(f"column '{task.label}' (label of {task.type} task '{task.name}') has type {t}, expected integers")
        elif task.type in ("binary", "regression") and not _is_number(t):
            out.append(f"column '{task.label}' (label of {task.type} task '{task.name}') has type {t}, expected numbers")
        if task.oracle:
            col(task.oracle, f"oracle of task '{task.name}'")
    return out


def _label_range_problems(spec: DatasetSpec, split: str, tasks) -> list[str]:
    """Reads only the label columns, file by file (bounded memory)."""
    out: list[str] = []
    files = split_files(spec, split)
    for task in tasks:
        lo, hi, bad_binary = math.inf, -math.inf, False
        for f in files:
            arr = pq.read_table(f, columns=[task.label]).column(0)
            if arr.null_count == len(arr):
                continue
            mm = pc.min_max(arr)
            lo, hi = min(lo, float(mm["min"].as_py())), max(hi, float(mm["max"].as_py()))
            if task.type == "binary":
                vals = pc.unique(arr.cast(pa.float64())).to_pylist()
                bad_binary |= any(v not in (0.0, 1.0, None) for v in vals)
            elif task.type == "regression":
                finite = pc.is_finite(arr.cast(pa.float64()))
                if pc.any(pc.invert(pc.fill_null(finite, True))).as_py():
                    out.append(f"splits.{split}: regression label '{task.label}' of task '{task.name}' has inf/nan values (use null for missing)")
        if lo == math.inf:
            out.append(f"splits.{split}: label '{task.label}' of task '{task.name}' is null in every row")
        elif task.type in ("multiclass", "contrastive") and (lo < 0 or hi >= task.num_classes):
            out.append(
                f"splits.{split}: label '{task.label}' of task '{task.name}' has values in [{lo:g}, {hi:g}], "
                f"expected integers in [0, {task.num_classes - 1}] (num_classes={task.num_classes})"
            )
        elif bad_binary:
            out.append(f"splits.{split}: binary label '{task.label}' of task '{task.name}' has values other than 0/1")
    return out


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
