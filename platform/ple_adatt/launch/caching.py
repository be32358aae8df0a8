"""Whether to pack a split once into the Ray object store (train.cache_train / cache_val) or stream
it from parquet every epoch: explicit true/false win; "auto" caches a split when the estimated packed
size of every auto-cached split together fits in CACHE_FRACTION of the object store.

The estimate packs the first SAMPLE_ROWS rows with the worker's own Packer and scales the bytes per
row by the split's row count (parquet metadata): a few milliseconds, no scan of the split."""
from __future__ import annotations

from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import parquet_dataset, split_files
from ple_adatt.data.preprocess import Packer, PreprocessState

CACHE_FRACTION = 0.3
"""Share of the object store the auto-cached splits may take: the rest stays free for the
streaming pipeline's blocks and the workers' objects, so caching never makes Ray spill."""
SAMPLE_ROWS = 256


def packed_bytes_per_row(cfg: ExperimentConfig, state: PreprocessState, split: str) -> float:
    """Bytes one packed row of ``split`` takes (the arrays build_datasets' Packer emits)."""
    spec, tasks = cfg.dataset, cfg.task_names()
    with_oracles = split != "train"
    cols = spec.input_columns() + [spec.task(t).label for t in tasks]
    if with_oracles:
        cols += [spec.task(t).oracle for t in tasks if spec.task(t).oracle]
    table = parquet_dataset(split_files(spec, split)).head(SAMPLE_ROWS, columns=list(dict.fromkeys(cols)))
    packed = Packer(spec, state, tasks, with_oracles=with_oracles)(table)
    return sum(a.nbytes for a in packed.values()) / max(1, table.num_rows)


def cache_plan(cfg: ExperimentConfig, state: PreprocessState, rows: dict[str, int],
               object_store_bytes: float) -> dict[str, tuple[bool, str]]:
    """{split: (cache?, why)} for train and val; ``rows`` per split (data/files.check_dataset)."""
    settings = {"train": cfg.train.cache_train, "val": cfg.train.cache_val}
    budget = CACHE_FRACTION * object_store_bytes
    plan, used = {}, 0.0
    for split in ("val", "train"):  # val first: every rank reads it every epoch
        setting = settings[split]
        if setting != "auto":
            plan[split] = (bool(setting), f"train.cache_{split}={str(setting).lower()}")
            continue
        size = packed_bytes_per_row(cfg, state, split) * rows[split]
        fits = used + size <= budget
        used += size if fits else 0.0
        plan[split] = (fits, f"auto: {rows[split]:,} rows ≈ {size / 2**20:,.0f} MiB packed "
                             f"{'<=' if fits else '>'} {CACHE_FRACTION:.0%} of the {object_store_bytes / 2**30:.1f} GiB "
                             f"object store{' (with the splits already cached)' if used and not fits else ''}")
    return plan
