"""What the packer will silently change, counted before Ray starts: non-finite feature values
(replaced by 0) and categories unseen in the train split (mapped to the out-of-vocabulary index 0).

    report = FeatureReport()
    state = fit_preprocessing(spec, report=report)          # counts the train split in its own scan
    feature_report(spec, state, ("train", "val"), report)  # one streaming pass per split not yet counted
    report.nonfinite["val"]["x0"]   # NaN, +-inf, or beyond float32 range (the packer's dtype)
    report.unseen["val"]["c0"]      # values not in the train vocabulary (incl. those past max_vocab)

`dataset.nonfinite: error` (config/dataset.py) turns any non-finite feature value into a DataError
naming the column, split and count. List columns are also checked row by row for their declared
length here (`list_length_problems`), so a ragged list fails naming column and file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.data.files import DataError, iter_batches, split_files

LIST_CHECK_ROWS = 10_000
"""Rows per file whose list lengths `list_length_problems` checks (the first ones: a sample)."""


@dataclass
class FeatureReport:
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> column -> values that are NaN, +-inf or beyond float32 range (packed as 0)."""
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> categorical column -> non-null values outside the train vocabulary (packed as 0)."""

    def lines(self) -> list[str]:
        """One log line per split with anything to report."""
        out = []
        for kind, counts, what in (("non-finite feature values", self.nonfinite, "replaced by 0"),
                                   ("categories unseen in train", self.unseen, "mapped to index 0")):
            for split, cols in counts.items():
                if any(cols.values()):
                    out.append(f"{kind} ({what}) in {split}: "
                               + ", ".join(f"{c}={n}" for c, n in cols.items() if n))
        return out

    def params(self) -> dict[str, int]:
        """Flat MLflow params: data.nonfinite.<split>.<column>, data.unseen.<split>.<column> (non-zero only)."""
        return {f"data.{kind}.{split}.{_param_safe(col)}": n for kind, counts in (("nonfinite", self.nonfinite), ("unseen", self.unseen))
                for split, cols in counts.items() for col, n in cols.items() if n}


def _param_safe(column: str) -> str:
    """A column name in MLflow's param-key charset (alphanumerics, _ - . / and space)."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in column)


def count_nonfinite(arr: pa.ChunkedArray | pa.Array) -> int:
    """Non-null values that are not finite once cast to float32 (what the packer feeds the model)."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = pc.list_flatten(arr)
    if not (pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type)):
        return 0  # integers and booleans are finite (an int beyond float32 range is not a realistic feature)
    x = arr.cast(pa.float32()) if not pa.types.is_decimal(arr.type) else arr.cast(pa.float64()).cast(pa.float32())
    bad = pc.invert(pc.is_finite(x))
    return int(pc.sum(pc.fill_null(bad, False)).as_py() or 0)


def feature_report(spec: DatasetSpec, state, splits: tuple[str, ...] = ("train", "val"),
                   report: FeatureReport | None = None, batch_rows: int = 65_536) -> FeatureReport:
    """Count non-finite values of every numeric/list column and unseen categories of every
    categorical column, per split (column-projected record batches: bounded memory). Splits
    already in `report` (the train split, counted by `fit_preprocessing(spec, report=...)`) are not
    read again. With `spec.nonfinite == "error"`, any non-finite count raises DataError."""
    rep = report if report is not None else FeatureReport()
    numeric = [c for g in spec.groups.values() if g.kind == "numeric" for c in g.columns]
    lists = [g.column for g in spec.groups.values() if g.kind == "list"]
    cats = {c: pa.array(state.vocab[name][i], pa.string())
            for name, g in spec.groups.items() if g.kind == "categorical" for i, c in enumerate(g.columns)}
    for split in splits:
        if split in rep.nonfinite:
            continue
        nf = dict.fromkeys(numeric + lists, 0)
        un = dict.fromkeys(cats, 0)
        for batch in iter_batches(split_files(spec, split), list(nf) + list(un), batch_rows):
            for c in nf:
                nf[c] += count_nonfinite(batch.column(c))
            for c, vocab in cats.items():
                col = batch.column(c).cast(pa.string())
                un[c] += int(pc.sum(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=vocab)))).as_py() or 0)
        rep.nonfinite[split], rep.unseen[split] = nf, un
    if spec.nonfinite == "error":
        bad = [f"splits.{s}: column '{c}' has {n} non-finite value(s) (NaN, inf or beyond float32 range); "
               f"dataset.nonfinite=error (set it to impute to replace them by 0)"
               for s, cols in rep.nonfinite.items() for c, n in cols.items() if n]
        if bad:
            raise DataError(bad)
    return rep


def list_length_problems(spec: DatasetSpec, splits: tuple[str, ...], rows_per_file: int = LIST_CHECK_ROWS) -> list[str]:
    """Variable-length list columns whose rows do not have the declared length, per file. Checks
    the first `rows_per_file` rows of every file (a sample: parquet metadata does not record list
    lengths, and reading whole files here would double the cost of a run's start). A ragged row
    past the sample still fails, later, in the packer (Arrow's cast error)."""
    declared = {g.column: math.prod(g.shape) for g in spec.groups.values() if g.kind == "list"}
    declared.update({c: 16 for c in spec.hmm.values()})
    out = []
    for split in splits:
        for f in split_files(spec, split):
            pf = pq.ParquetFile(f)
            present = [c for c in declared if c in pf.schema_arrow.names
                       and not pa.types.is_fixed_size_list(pf.schema_arrow.field(c).type)]
            if not present:
                continue
            table = next(pf.iter_batches(batch_size=rows_per_file, columns=present), None)
            if table is None:
                continue
            for c in present:
                lengths = pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False)
                lengths = lengths[~np.isnan(lengths.astype(np.float64))] if lengths.dtype.kind == "f" else lengths
                wrong = lengths[lengths != declared[c]]
                if len(wrong):
                    out.append(f"{f}: column '{c}' has {len(wrong)} row(s) of length != {declared[c]} (e.g. "
                               f"{int(wrong[0])}) in its first {min(rows_per_file, pf.metadata.num_rows)} rows "
                               f"(sampled; the declared shape needs {declared[c]} values per row)")
    return out


def check_list_lengths(spec: DatasetSpec, splits: tuple[str, ...]) -> None:
    """DataError listing every ragged list column per file (sampled: `list_length_problems`)."""
    problems = list_length_problems(spec, splits)
    if problems:
        raise DataError(problems)
