"""Ray Data readers of a dataset's parquet splits (the one place the project calls read_parquet)."""
from __future__ import annotations

import math
import os

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.data.files import split_files

# Ray Data 2.60 reads parquet footers on a pool of FooterReader actors that every execution of a
# pipeline starts anew: 32 by default (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS), i.e. 32 Python
# processes before the first row is read. A streaming epoch pays that again, and on a small
# machine it is 10-30 s for a split of a few files. The actors take footers in batches of 10 files
# (RAY_DATA_PARQUET_FOOTER_BATCH_SIZE), so more readers than batches only add start-up.
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_BATCH = 10
MAX_FOOTER_ACTORS = 32


def footer_actors(num_files: int) -> int:
    """Footer-reader actors for a split of `num_files` files: one per footer batch, at most Ray's default."""
    return max(1, min(MAX_FOOTER_ACTORS, math.ceil(num_files / FILES_PER_FOOTER_BATCH)))


def read_split(spec: DatasetSpec, split: str, columns: list[str]):
    """A lazy `ray.data.Dataset` of `columns` of one split. The footer-reader pool is sized to the
    split's files (Ray reads the setting when the read is planned); a user's own
    RAY_DATA_PARQUET_FOOTER_NUM_ACTORS wins."""
    import ray.data

    files = split_files(spec, split)
    if FOOTER_ACTORS_ENV in os.environ:
        return ray.data.read_parquet(files).select_columns(columns)
    os.environ[FOOTER_ACTORS_ENV] = str(footer_actors(len(files)))
    try:
        ds = ray.data.read_parquet(files)
    finally:
        os.environ.pop(FOOTER_ACTORS_ENV, None)
    return ds.select_columns(columns)
