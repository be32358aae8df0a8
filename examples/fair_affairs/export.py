"""Export Fair's extramarital-affairs table (statsmodels, 6366 rows) to parquet train/val/test.

    python examples/fair_affairs/export.py --out data/fair      # from the repo root

This is the user's own one-off data step, not part of the platform: everything after it is the
hand-written examples/fair_affairs/dataset.yaml. The table ships inside the statsmodels wheel
(no download). Labels: had_affair (affairs > 0), marriage_rating (rate_marriage - 1, 5 classes),
log_affairs (log1p of the hours); features: the other seven columns.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = {"train": 0.70, "val": 0.15, "test": 0.15}


def fair_table() -> pd.DataFrame:
    from statsmodels.datasets import fair

    raw = fair.load_pandas().data
    return pd.DataFrame({
        "id": np.arange(len(raw), dtype=np.int64),
        "age": raw["age"], "yrs_married": raw["yrs_married"], "children": raw["children"],
        "religious": raw["religious"], "educ": raw["educ"],
        "occupation": raw["occupation"].astype(np.int64),            # 1..6 codes: categorical
        "occupation_husb": raw["occupation_husb"].astype(np.int64),
        "had_affair": (raw["affairs"] > 0).astype(np.int64),
        "marriage_rating": (raw["rate_marriage"] - 1).astype(np.int64),  # 0..4
        "log_affairs": np.log1p(raw["affairs"]),
    })


def export(out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write <out>/{train,val,test}/part-0.parquet via a temporary folder renamed at the end."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to replace it")
    df = fair_table()
    order = np.random.default_rng(seed).permutation(len(df))
    cuts = np.cumsum([round(f * len(df)) for f in SPLITS.values()])[:-1]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        for split, idx in zip(SPLITS, np.split(order, cuts)):
            (tmp / split).mkdir()
            df.iloc[np.sort(idx)].to_parquet(tmp / split / "part-0.parquet", index=False)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/fair", help="output folder (default: data/fair)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 70/15/15 split")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty out folder")
    a = p.parse_args()
    try:
        out = export(a.out, a.seed, a.overwrite)
    except FileExistsError as e:
        sys.exit(f"export: {e}")
    counts = {s: len(pd.read_parquet(out / s)) for s in SPLITS}
    print(f"wrote {out}: " + ", ".join(f"{s} {n} rows" for s, n in counts.items()))


if __name__ == "__main__":
    main()
