"""Synthetic financial customers with known ground truth: config, streaming writer, oracle metrics.

    cfg = load_generator_config("configs/datasets/synthetic_financial.yaml", ["task_correlation=-0.5"])
    generate(cfg, rows=100_000, out_dir="data/synthetic")   # -> data/synthetic/dataset.yaml

Determinism: rows are produced in fixed blocks of BLOCK_ROWS; block b draws from
`default_rng([seed, stream, b])`, so every row depends only on (config, seed, row index) and
never on `chunk_rows` (which only sets how many rows are buffered before a parquet write).
Memory is bounded by chunk_rows + one block, whatever `rows` is.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from ple_adatt.config.loading import ConfigError, validate
from ple_adatt.config.paths import apply_overrides, read_yaml

from .synthetic_labels import ANCHORS, GROUPS, RETENTION_IF_CHURNED, TASKS, LabelModel
from .synthetic_population import (HMM_MODES, PERSONAS, PROFILE, SEQ_FEATURES, TABULAR, World, make_world,
                                   sample_population)

BLOCK_ROWS = 4096                  # part of the RNG scheme: changing it changes the data
TASK_NAMES = tuple(t[0] for t in TASKS)
STREAM_FEATURES, STREAM_CALIBRATION, STREAM_LABELS = 1, 2, 3
STREAM_SCARCITY = 4               # label_scarcity's draws: switching the regime on changes no other column
EXPERTS = {"tabular": ["deepfm", "causal", "optimal_transport"], "profile": ["deepfm"],
           "sequence": ["temporal"], "hierarchy": ["hgcn"], "tda": ["perslay"], "collaborative": ["lightgcn"]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Splits(_Strict):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1 (got {self.train + self.val + self.test:.6g})")
        return self


class BaseRates(_Strict):
    """Unconditional positive rates of the binary tasks; each strictly inside (0, 1)."""

    ctr: float = Field(0.05, gt=0, lt=1)
    cvr: float = Field(0.015, gt=0, lt=1)
    churn: float = Field(0.08, gt=0, lt=1)
    retention: float = Field(0.90, gt=0, lt=1)

    @model_validator(mode="after")
    def _funnel(self):
        if self.cvr >= self.ctr:   # a conversion needs a click
            raise ValueError(f"cvr ({self.cvr}) must be below ctr ({self.ctr}): CVR is the CTR->CVR funnel")
        # Churners are retained with P = RETENTION_IF_CHURNED, so retention <= 1 - churn * (1 - that).
        ceiling = 1 - self.churn * (1 - RETENTION_IF_CHURNED)
        if self.retention >= ceiling:
            raise ValueError(f"retention ({self.retention}) must be below 1 - churn * {1 - RETENTION_IF_CHURNED:g} "
                             f"= {ceiling:.4f} (churners are rarely retained: Churn -> Retention edge)")
        return self


class TaskCorrelation(_Strict):
    """Per task group rho in [-1, 1]: corr(anchor signal, other task signal); negative = conflict."""

    engagement: float = Field(0.5, ge=-1, le=1)
    lifecycle: float = Field(0.5, ge=-1, le=1)
    value: float = Field(0.5, ge=-1, le=1)
    consumption: float = Field(0.5, ge=-1, le=1)


class LabelScarcity(_Strict):
    """The transfer regime (issue 20): `task` keeps its label on only `label_fraction` of the TRAIN
    rows (the rest are null, so masked in the loss); val and test rows stay labelled, so the task is
    still measured on full splits. Its function is shared with its group's dense anchor (ctr, churn,
    balance_util, spending_bucket) through task_correlation.<group>: s_task = rho U + sqrt(1-rho^2) V."""

    task: str | None = None
    """The label-scarce task (a non-anchor, non-contrastive task); None = the regime is off."""
    label_fraction: float = Field(0.02, gt=0, le=1)
    """Share of train rows that keep the task's label (e.g. 0.01-0.05)."""

    @field_validator("task")
    @classmethod
    def _task(cls, v):
        if v is None:
            return v
        kinds = {name: kind for name, kind, *_ in TASKS}
        anchors = {a for a in ANCHORS.values()}
        if v not in kinds or v in anchors or kinds[v] == "contrastive":
            valid = [t for t in TASK_NAMES if t not in anchors and kinds[t] != "contrastive"]
            raise ValueError(f"'{v}' cannot be the label-scarce task: it must share its group anchor's "
                             f"function, so a non-anchor, non-contrastive task; valid: {valid}")
        return v


def scarce_label_mask(cfg: "GeneratorConfig", seed: int, b: int, n_train: int) -> np.ndarray | None:
    """Rows of block b [BLOCK_ROWS] whose label_scarcity.task label is dropped: train rows (global
    index < n_train) outside the kept `label_fraction`; None when the regime is off. A function of
    (seed, row index) alone, like every other column."""
    ls = cfg.label_scarcity
    if ls.task is None:
        return None
    rows = np.arange(b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)
    keep = np.random.default_rng([seed, STREAM_SCARCITY, b]).random(BLOCK_ROWS) < ls.label_fraction
    return (rows < n_train) & ~keep


class GeneratorConfig(_Strict):
    name: str = "synthetic_financial"
    seed: int = 42
    splits: Splits = Splits()
    base_rates: BaseRates = BaseRates()
    task_correlation: TaskCorrelation = TaskCorrelation()
    persona_weights: list[float] = Field(default=[0.22, 0.2, 0.16, 0.1, 0.17, 0.15],
                                         min_length=len(PERSONAS), max_length=len(PERSONAS))
    seq_days: int = Field(30, ge=28, le=180)         # timing task reads days 0..27
    hmm_missing_rate: float = Field(0.03, ge=0, lt=1)
    label_missing_rate: dict[str, float] = {"ltv": 0.05}
    label_scarcity: LabelScarcity = LabelScarcity()
    n_brands: int = Field(128, ge=12)
    gmm_components: int = Field(20, ge=2)
    gmm_fit_rows: int = Field(20_000, ge=100)
    calibration_rows: int = Field(16_384, ge=2_048)
    signal_scale: float = Field(1.0, gt=0)
    noise_scale: float = Field(1.0, ge=0)
    chunk_rows: int = Field(50_000, ge=1)            # rows buffered per parquet write (memory bound)
    shard_rows: int = Field(250_000, ge=1)           # rows per parquet file

    @field_validator("task_correlation", mode="before")
    @classmethod
    def _scalar_rho(cls, v):
        return {g: v for g in GROUPS} if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("persona_weights")
    @classmethod
    def _weights(cls, v):
        if min(v) < 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"must be {len(PERSONAS)} non-negative weights summing to 1 ({', '.join(PERSONAS)})")
        return v

    @field_validator("label_missing_rate")
    @classmethod
    def _missing(cls, v):
        bad = [k for k in v if k not in TASK_NAMES]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; valid: {list(TASK_NAMES)}")
        out = [k for k, r in v.items() if not 0 <= r < 1]
        if out:
            raise ValueError(f"rates must be in [0, 1); got {({k: v[k] for k in out})}")
        return v


def load_generator_config(path: str | Path | None = None, overrides: list[str] = ()) -> GeneratorConfig:
    """Load the generator YAML, apply dotted `key.sub=value` overrides (config/paths.py, the same engine
    as experiment overrides); every problem is reported at once in one ConfigError (a ValueError)."""
    problems: list[str] = []
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides, problems)
    source = str(path or "<defaults>")
    try:
        cfg = validate(raw, GeneratorConfig, source)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(source, problems)
    return cfg


def split_sizes(rows: int, splits: Splits) -> dict[str, int]:
    """Contiguous row ranges: train [0, n_train), val next, test the rest."""
    if not isinstance(rows, (int, np.integer)) or isinstance(rows, bool) or rows <= 0:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    n_train, n_val = int(round(rows * splits.train)), int(round(rows * splits.val))
    sizes = {"train": n_train, "val": n_val, "test": rows - n_train - n_val}
    if n_train == 0 or n_val == 0:
        raise ValueError(f"rows={rows} leaves an empty split {sizes}; use more rows")
    return sizes if splits.test > 0 else {"train": n_train, "val": rows - n_train}


def _population(cfg: GeneratorConfig, world: World, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return sample_population(world, rng, n, np.asarray(cfg.persona_weights), cfg.seq_days, cfg.hmm_missing_rate)


def build_label_model(cfg: GeneratorConfig, seed: int) -> tuple[World, LabelModel]:
    """The seed's world and the label model calibrated on its own sample (independent of rows)."""
    world = make_world(seed, cfg.n_brands)
    calib = _population(cfg, world, np.random.default_rng([seed, STREAM_CALIBRATION]), cfg.calibration_rows)
    return world, LabelModel.calibrate(
        calib, world=world, rho=cfg.task_correlation.model_dump(), base_rates=cfg.base_rates.model_dump(),
        signal_scale=cfg.signal_scale, noise_scale=cfg.noise_scale, n_brands=cfg.n_brands)


def features_from_table(table: pa.Table, seq_days: int) -> dict[str, np.ndarray]:
    """Written columns -> the feature dict the label model reads (inverse of the layout of `table()`)."""
    def stack(col: str, width: int) -> np.ndarray:
        arr = table.column(col).combine_chunks()
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        dense = np.zeros((len(arr), width), np.float32)
        dense[~missing] = np.asarray(arr.drop_null().flatten(), np.float32).reshape(-1, width)
        return dense, missing

    f: dict[str, np.ndarray] = {c: table.column(c).to_numpy() for c in TABULAR}
    for c in PROFILE:
        f[c] = np.asarray(table.column(c).to_pylist())
    f["txn_seq"] = stack("txn_seq", seq_days * len(SEQ_FEATURES))[0].reshape(-1, seq_days, len(SEQ_FEATURES))
    for c, width in (("hierarchy", 8), ("tda", 16), ("collaborative", 16)):
        f[c] = stack(c, width)[0]
    for mode in HMM_MODES:
        f[f"hmm_{mode}"], f[f"hmm_{mode}_missing"] = stack(f"hmm_{mode}", 16)
    return f


class _Generator:
    """Holds the seed-derived world, the calibrated label model and the train-fitted GMM."""

    def __init__(self, cfg: GeneratorConfig, seed: int, n_train: int):
        self.cfg, self.seed, self.n_train = cfg, seed, n_train
        self.world, self.labels = build_label_model(cfg, seed)
        n_fit = min(n_train, cfg.gmm_fit_rows)
        if n_fit < 5 * cfg.gmm_components:
            raise ValueError(f"the {cfg.gmm_components}-component GMM needs >= {5 * cfg.gmm_components} train rows "
                             f"to fit; got {n_fit}. Raise rows or lower gmm_components")
        # The GMM sees the first n_fit *train* rows' features only (never labels, never val/test).
        x = np.concatenate([self._gmm_inputs(self.block(b)[0]) for b in range(-(-n_fit // BLOCK_ROWS))])[:n_fit]
        self.gmm_mean, self.gmm_std = x.mean(0), x.std(0) + 1e-9
        with threadpool_limits(1):   # BLAS/OpenMP threads on tiny matrices oversubscribe: ~10x slower
            self.gmm = GaussianMixture(cfg.gmm_components, covariance_type="full", reg_covar=1e-3, tol=1e-2, max_iter=100,
                                       random_state=seed % 2**32).fit((x - self.gmm_mean) / self.gmm_std)

    def _features(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return _population(self.cfg, self.world, rng, n)

    @staticmethod
    def _gmm_inputs(f: dict[str, np.ndarray]) -> np.ndarray:
        """[N, 10] log-scaled tabular features (heavy tails would give the GMM degenerate clusters)."""
        cols = [np.log1p(f[c]) if c not in ("age", "savings_rate") else f[c] for c in TABULAR]
        return np.stack(cols, 1)

    def block(self, b: int, with_labels: bool = False):
        """Features (and labels, oracles) of block b, rows [b*BLOCK_ROWS, (b+1)*BLOCK_ROWS)."""
        f = self._features(np.random.default_rng([self.seed, STREAM_FEATURES, b]), BLOCK_ROWS)
        if not with_labels:
            return f, None, None
        rng = np.random.default_rng([self.seed, STREAM_LABELS, b])
        y, o = self.labels.draw(f, rng)
        missing = {t: rng.random(BLOCK_ROWS) < r for t, r in self.cfg.label_missing_rate.items()}
        return f, (y, missing), o

    def table(self, b: int) -> pa.Table:
        """Block b as an Arrow table (all columns of the written layout)."""
        f, (y, missing), o = self.block(b, with_labels=True)
        scarce = scarce_label_mask(self.cfg, self.seed, b, self.n_train)
        if scarce is not None:
            t = self.cfg.label_scarcity.task
            missing = {**missing, t: missing[t] | scarce if t in missing else scarce}
        cols: dict[str, pa.Array] = {"customer_id": pa.array(np.arange(b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS))}
        for c in TABULAR:
            cols[c] = pa.array(f[c].astype(np.float32))
        for c in PROFILE:
            cols[c] = pa.array(f[c].tolist() if f[c].dtype.kind == "U" else f[c])
        for c in ("txn_seq", "hierarchy", "tda", "collaborative"):
            cols[c] = _fixed_list(f[c])
        for mode in HMM_MODES:   # variable list: pyarrow 25 cannot read back null rows of a fixed-size list
            cols[f"hmm_{mode}"] = _nullable_list(f[f"hmm_{mode}"], f[f"hmm_{mode}_missing"])
        post = self.gmm.predict_proba((self._gmm_inputs(f) - self.gmm_mean) / self.gmm_std)
        cols["gmm_posterior"] = _fixed_list(post)
        for name, kind, *_ in TASKS:
            dtype = {"binary": np.int8, "regression": np.float32}.get(kind, np.int64)
            cols[f"y_{name}"] = pa.array(y[name].astype(dtype), mask=missing.get(name))
            if name in o:
                cols[f"oracle_{name}"] = _fixed_list(o[name]) if o[name].ndim == 2 else pa.array(o[name].astype(np.float32))
        for k, v in f.items():
            if k.startswith("latent_"):
                cols[k] = pa.array(v)
        return pa.table(cols)


def _fixed_list(x: np.ndarray) -> pa.Array:
    """[N, ...] float -> fixed_size_list<float32>[prod(...)] (row-major flatten of [T, F])."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _nullable_list(x: np.ndarray, missing: np.ndarray) -> pa.Array:
    """[N, D] float + missing [N] bool -> list<float32> with D values per present row, null rows.

    A fixed-size list with null rows writes to parquet but fails to read back in pyarrow 25
    ("Expected all lists to be of size=D but index i had size=0"), so missing rows are
    stored as nulls of a variable-size list instead.
    """
    n, d = x.shape
    keep = ~missing
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(keep * d)
    values = pa.array(np.ascontiguousarray(x[keep], dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(missing))


class _ShardWriter:
    """Buffers up to chunk_rows, then writes; rolls to a new part file every shard_rows rows."""

    def __init__(self, folder: Path, chunk_rows: int, shard_rows: int):
        folder.mkdir(parents=True)
        self.folder, self.chunk_rows, self.shard_rows = folder, chunk_rows, shard_rows
        self.buffer: list[pa.Table] = []
        self.buffered = self.in_shard = self.shards = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, t: pa.Table) -> None:
        self.buffer.append(t)
        self.buffered += t.num_rows
        if self.buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        t = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        while t.num_rows:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.folder / f"part-{self.shards:05d}.parquet", t.schema,
                                               compression="zstd")
            take = min(t.num_rows, self.shard_rows - self.in_shard)
            self.writer.write_table(t.slice(0, take), row_group_size=self.chunk_rows)
            t, self.in_shard = t.slice(take), self.in_shard + take
            if self.in_shard == self.shard_rows:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_shard, self.shards = None, 0, self.shards + 1


def _fingerprint(cfg: GeneratorConfig, rows: int, seed: int) -> str:
    """Identity of the data content; chunk_rows/shard_rows only change the file layout."""
    content = cfg.model_dump(exclude={"chunk_rows", "shard_rows", "seed"}) | {"rows": rows, "seed": seed,
                                                                               "block_rows": BLOCK_ROWS}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def generate(config: GeneratorConfig | dict | str | Path, rows: int, out_dir: str | Path, seed: int | None = None,
             overwrite: bool = False, chunk_rows: int | None = None, workers: int = 1, ray_tasks: bool = False) -> Path:
    """Write train/ val/ [test/] parquet shards + dataset.yaml into out_dir; return the YAML path.

    config: GeneratorConfig, a dict, or a YAML path. seed: overrides config.seed. workers > 1
    draws blocks in that many processes (same bytes as workers=1: rows depend on block index only).
    ray_tasks: one Ray task per chunk of ~chunk_rows rows (``_write_ray``; joins or starts Ray), each
    writing its own part files; the files do not depend on how many CPUs Ray has.
    An out_dir holding the same dataset (same fingerprint) is left as is; a different
    non-empty out_dir is refused unless overwrite=True. Writes go to a temp dir, then rename.
    """
    cfg = config if isinstance(config, GeneratorConfig) else (
        load_generator_config(config) if isinstance(config, (str, Path)) else _validate(config))
    seed = cfg.seed if seed is None else int(seed)
    sizes = split_sizes(rows, cfg.splits)
    chunk_rows = cfg.chunk_rows if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out folder {out_dir} is an existing file, not a folder; choose another --out")
    fp = _fingerprint(cfg, rows, seed)
    if out_dir.exists() and any(out_dir.iterdir()):
        marker = out_dir / "generator.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp:
            return out_dir / "dataset.yaml"
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds {'a different dataset' if marker.exists() else 'files'}"
                                  f"; pass overwrite=True (--overwrite) to replace it")
    with threadpool_limits(1):       # per-block matrices are small; threads only add contention
        if ray_tasks:
            return _write_ray(cfg, seed, sizes, rows, out_dir, chunk_rows, fp)
        return _write(cfg, seed, sizes, rows, out_dir, chunk_rows, fp, workers)


_WORKER_GEN: _Generator | None = None


def _init_worker(gen: _Generator) -> None:
    global _WORKER_GEN
    _WORKER_GEN = gen
    threadpool_limits(1)


def _worker_table(b: int) -> pa.Table:
    return _WORKER_GEN.table(b)


def _tables(gen: _Generator, n_blocks: int, workers: int):
    """Block tables in block order; with workers > 1, from a process pool with <= 2*workers in flight."""
    if workers <= 1:
        yield from (gen.table(b) for b in range(n_blocks))
        return
    # spawn, not fork: forking a process that already runs Arrow/BLAS threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(gen,)) as pool:
        pending: deque = deque()
        for b in range(n_blocks):
            pending.append(pool.submit(_worker_table, b))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write(cfg: GeneratorConfig, seed: int, sizes: dict[str, int], rows: int, out_dir: Path, chunk_rows: int,
           fp: str, workers: int) -> Path:
    gen = _Generator(cfg, seed, sizes["train"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))  # new: never a user's folder
    writers: dict[str, _ShardWriter] = {}
    try:
        bounds, start = {}, 0
        for split, n in sizes.items():
            bounds[split], start = (start, start + n), start + n
            writers[split] = _ShardWriter(tmp / split, chunk_rows, cfg.shard_rows)
        for b, t in enumerate(_tables(gen, -(-rows // BLOCK_ROWS), workers)):
            lo = b * BLOCK_ROWS
            for split, (a, z) in bounds.items():
                a, z = max(a, lo), min(z, lo + BLOCK_ROWS, rows)
                if a < z:
                    writers[split].add(t.slice(a - lo, z - a))
        for w in writers.values():
            w.flush()
            w.close()
        _finish(cfg, fp, rows, seed, sizes, tmp, out_dir)
    finally:
        for w in writers.values():   # after a failure: release file handles, then drop the partial output
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "dataset.yaml"


def _chunk_files(gen: _Generator, chunk: int, blocks: range, bounds: dict[str, tuple[int, int]], rows: int,
                 folder: str, row_group_rows: int) -> dict[str, int]:
    """Blocks ``blocks`` as one part file per split they touch, ``<folder>/<split>/part-<chunk>.parquet``;
    returns rows written per split. Pure function of (generator, chunk, blocks): any task may run it."""
    with threadpool_limits(1):
        parts: dict[str, list[pa.Table]] = {}
        for b in blocks:
            t, lo = gen.table(b), b * BLOCK_ROWS
            for split, (a, z) in bounds.items():
                a, z = max(a, lo), min(z, lo + BLOCK_ROWS, rows)
                if a < z:
                    parts.setdefault(split, []).append(t.slice(a - lo, z - a))
        written = {}
        for split, tables in parts.items():
            t = pa.concat_tables(tables)
            pq.write_table(t, Path(folder) / split / f"part-{chunk:05d}.parquet", compression="zstd",
                           row_group_size=row_group_rows)
            written[split] = t.num_rows
        return written


def _write_ray(cfg: GeneratorConfig, seed: int, sizes: dict[str, int], rows: int, out_dir: Path, chunk_rows: int,
               fp: str) -> Path:
    """Chunks of ceil(chunk_rows / BLOCK_ROWS) blocks as Ray tasks (1 CPU each) writing their part files
    into the new dataset folder: the driver only fits the generator (fixed-size GMM sample) and
    waits. Same rows as ``_write`` (rows depend on the block index only); the file layout depends
    on chunk_rows, never on the number of CPUs. The folder must be visible to every task's node
    (one machine, or a shared filesystem)."""
    import ray

    gen = _Generator(cfg, seed, sizes["train"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))  # new: never a user's folder
    bounds, start = {}, 0
    for split, n in sizes.items():
        bounds[split], start = (start, start + n), start + n
        (tmp / split).mkdir(parents=True)
    try:
        if not ray.is_initialized():
            ray.init(log_to_driver=True)
        per_chunk = -(-chunk_rows // BLOCK_ROWS)
        n_blocks = -(-rows // BLOCK_ROWS)
        task = ray.remote(num_cpus=1)(_chunk_files)
        t0 = time.perf_counter()
        gen_ref = ray.put(gen)
        refs = [task.remote(gen_ref, c, range(b, min(b + per_chunk, n_blocks)), bounds, rows, str(tmp), chunk_rows)
                for c, b in enumerate(range(0, n_blocks, per_chunk))]
        written: dict[str, int] = {}
        for part in ray.get(refs):
            for split, n in part.items():
                written[split] = written.get(split, 0) + n
        if written != {k: v for k, v in sizes.items() if v}:
            raise RuntimeError(f"generation wrote {written} rows per split, expected {sizes}")
        took = time.perf_counter() - t0
        print(f"[generate] {rows:,} rows by {len(refs)} Ray tasks on {ray.cluster_resources().get('CPU', 0):.0f} CPUs "
              f"in {took:.1f} s ({rows / took:,.0f} rows/s, generator fit excluded)", flush=True)
        _finish(cfg, fp, rows, seed, sizes, tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "dataset.yaml"


def _finish(cfg: GeneratorConfig, fp: str, rows: int, seed: int, sizes: dict[str, int], tmp: Path,
            out_dir: Path) -> None:
    """The dataset YAML and the generator's record beside the part files, then the folder swapped in."""
    (tmp / "dataset.yaml").write_text(dataset_yaml(cfg, has_test="test" in sizes))
    (tmp / "generator.json").write_text(json.dumps(
        {"fingerprint": fp, "rows": rows, "seed": seed, "splits": sizes, "block_rows": BLOCK_ROWS,
         "config": cfg.model_dump()}, indent=2))
    _swap_in(tmp, out_dir)


def _validate(raw: dict) -> GeneratorConfig:
    return validate(raw, GeneratorConfig, "<dict>")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp; the old content is moved aside first and removed last."""
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))  # new and ours
    if out_dir.exists():
        out_dir.rename(old / "previous")
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


class _FlowLists(yaml.SafeDumper):
    pass


_FlowLists.add_representer(  # short scalar lists inline ([a, b]); lists of mappings (tasks) in block style
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                            flow_style=not any(isinstance(i, dict) for i in v)))


def dataset_spec(cfg: GeneratorConfig, has_test: bool = True) -> dict:
    """The dataset YAML (docs/dataset-spec.md) describing the generated layout."""
    groups = {
        "tabular": {"kind": "numeric", "columns": list(TABULAR)},
        "profile": {"kind": "categorical", "columns": list(PROFILE)},
        "sequence": {"kind": "list", "column": "txn_seq", "shape": [cfg.seq_days, len(SEQ_FEATURES)],
                     "standardize": True},
        # Poincare coordinates: standardising would push points out of the unit ball.
        "hierarchy": {"kind": "list", "column": "hierarchy", "shape": [8], "standardize": False},
        "tda": {"kind": "list", "column": "tda", "shape": [16], "standardize": True},
        "collaborative": {"kind": "list", "column": "collaborative", "shape": [16], "standardize": False},
    }
    for g, spec in groups.items():
        spec["experts"] = EXPERTS[g]
    tasks = []
    for name, kind, group, mode, k in TASKS:
        t: dict[str, Any] = {"name": name, "type": kind}
        if kind in ("multiclass", "contrastive"):
            t["num_classes"] = cfg.n_brands if kind == "contrastive" else k
        t |= {"label": f"y_{name}", "group": group, "hmm_mode": mode}
        if kind != "contrastive":   # a [n_brands] oracle per row would dominate the files
            t["oracle"] = f"oracle_{name}"
        tasks.append(t)
    return {"name": cfg.name,
            "splits": {"train": "train/", "val": "val/"} | ({"test": "test/"} if has_test else {}),
            "id_column": "customer_id", "groups": groups, "cluster_probs": "gmm_posterior",
            "hmm": {m: f"hmm_{m}" for m in HMM_MODES}, "tasks": tasks}


def dataset_yaml(cfg: GeneratorConfig, has_test: bool = True) -> str:
    head = (f"# {cfg.name}: synthetic financial customers with oracle columns "
            "(generated by jobs/generate_data.py; do not edit).\n"
            "# Train:  python jobs/train.py --config configs/experiments/synthetic_ple.yaml dataset=<this file>\n")
    return head + yaml.dump(dataset_spec(cfg, has_test), Dumper=_FlowLists, sort_keys=False, width=120)


# ---------------------------------------------------------------- oracle metrics
def _columns(data, names: list[str]) -> dict[str, np.ndarray]:
    """pandas DataFrame / pyarrow Table / dict -> {name: array}; list columns -> [N, K] (NaN rows if null)."""
    out = {}
    for n in names:
        col = data[n] if not isinstance(data, pa.Table) else data.column(n)
        if isinstance(col, (pa.ChunkedArray, pa.Array)):
            col = col.to_pylist()
        col = list(col) if not isinstance(col, np.ndarray) else col
        first = next((v for v in col if v is not None), None)
        if first is not None and np.ndim(first) == 1:
            k = len(first)
            out[n] = np.array([v if v is not None else [np.nan] * k for v in col], dtype=np.float64)
        else:
            out[n] = np.array([np.nan if v is None else v for v in col], dtype=np.float64)
    return out


def oracle_metrics(data, spec: dict | str | Path) -> dict[str, dict[str, float]]:
    """Bayes-optimal metrics from the stored oracle columns, per task that has one.

    data: one split as pandas DataFrame, pyarrow Table or dict of arrays. spec: dataset YAML
    (dict or path). Rows with a null label are skipped. Returns {task: {metric: value}}:
    binary auc, pr_auc, log_loss; multiclass accuracy, log_loss; regression noise_var
    (= oracle MSE), rmse, mae, r2.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not isinstance(spec, dict):
        spec = yaml.safe_load(Path(spec).read_text())
    result: dict[str, dict[str, float]] = {}
    for task in spec.get("tasks", []):
        if not task.get("oracle"):
            continue
        c = _columns(data, [task["label"], task["oracle"]])
        y, o = c[task["label"]], c[task["oracle"]]
        keep = ~np.isnan(y)
        y, o = y[keep], o[keep]
        if task["type"] == "binary":
            p = np.clip(o, 1e-12, 1 - 1e-12)
            ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            result[task["name"]] = {"auc": float(roc_auc_score(y, o)), "pr_auc": float(average_precision_score(y, o)),
                                    "log_loss": float(ll)}
        elif task["type"] == "multiclass":
            yi = y.astype(int)
            p = np.clip(o[np.arange(len(yi)), yi], 1e-12, 1)
            result[task["name"]] = {"accuracy": float(np.mean(o.argmax(1) == yi)), "log_loss": float(-np.log(p).mean())}
        elif task["type"] == "regression":
            err = y - o
            mse = float(np.mean(err ** 2))
            result[task["name"]] = {"noise_var": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.abs(err).mean()),
                                    "r2": float(1 - mse / np.var(y))}
        else:
            raise ValueError(f"task {task['name']!r}: no oracle metric for type {task['type']!r}")
    return result
