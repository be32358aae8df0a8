"""A tiny, fast parquet dataset for tests: every column kind, every task type, missing labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

TINY_SPEC = {
    "name": "tiny",
    "splits": {"train": "train/", "val": "val/", "test": "test/"},
    "id_column": "id",
    "groups": {
        "num": {"kind": "numeric", "columns": ["x0", "x1", "x2"], "experts": ["mlp"]},
        "cat": {"kind": "categorical", "columns": ["c0", "c1"], "experts": ["mlp"]},
        "seq": {"kind": "list", "column": "seq", "shape": [5, 2], "experts": ["mlp"]},
    },
    "tasks": [
        {"name": "click", "type": "binary", "label": "y_click", "oracle": "p_click"},
        {"name": "stage", "type": "multiclass", "num_classes": 3, "label": "y_stage"},
        {"name": "value", "type": "regression", "label": "y_value"},
    ],
}


def tiny_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    seq = rng.normal(size=(rows, 10)).astype(np.float32)
    c0 = rng.choice(["a", "b", "c", "d"], size=rows)
    c1 = rng.integers(0, 5, size=rows)
    logit = 1.5 * x[:, 0] - x[:, 1] + (c0 == "a") + 0.5 * seq[:, 0]
    p = 1 / (1 + np.exp(-logit))
    y_click = (rng.random(rows) < p).astype(np.float64)
    stage = np.digitize(x[:, 2] + 0.3 * rng.normal(size=rows), [-0.5, 0.5])
    value = 2.0 * x[:, 0] + seq[:, 3] + 0.1 * rng.normal(size=rows)
    click_col = pa.array([None if i % 17 == 0 else v for i, v in enumerate(y_click)], pa.float64())  # missing labels
    return pa.table({
        "id": pa.array(np.arange(rows) + seed * 1_000_000),
        "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2],
        "c0": c0, "c1": c1,
        "seq": pa.FixedSizeListArray.from_arrays(pa.array(seq.reshape(-1)), 10),
        "y_click": click_col, "p_click": p.astype(np.float32),
        "y_stage": stage.astype(np.int64), "y_value": value.astype(np.float32),
    })


def write_tiny_dataset(root: str | Path, rows: int = 600, files: int = 2, seed: int = 0) -> Path:
    root = Path(root)
    for i, split in enumerate(["train", "val", "test"]):
        n = rows if split == "train" else rows // 3
        (root / split).mkdir(parents=True, exist_ok=True)
        table = tiny_table(n, seed * 10 + i)
        per = -(-n // files)
        for f in range(files):
            pq.write_table(table.slice(f * per, per), root / split / f"part-{f}.parquet")
    path = root / "dataset.yaml"
    path.write_text("# Tiny test dataset (tests/tiny_data.py).\n" + yaml.safe_dump(TINY_SPEC, sort_keys=False))
    return path
