"""Convert the raw UCI Census-Income (KDD) files into parquet + dataset.yaml (income, never-married).

    python jobs/prepare_census.py --train ../shared/datasets/census-income/census-income.train.gz \
        --val ../shared/datasets/census-income/census-income.val.gz --out data/census
Add --with-education for the third task (bachelor's or higher; education columns leave the features).
"""
import argparse
import sys

from ple_adatt.cli import run_job
from ple_adatt.data.census import prepare_census


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="raw training file (gzip CSV, 42 columns, no header)")
    p.add_argument("--val", required=True, help="raw validation file (half of the official test file)")
    p.add_argument("--test", default=None, help="optional raw held-out test file")
    p.add_argument("--out", required=True, help="output folder (gets *.parquet + dataset.yaml)")
    p.add_argument("--with-education", action="store_true", help="add the education task")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty out folder")
    a = p.parse_args()
    try:
        path = prepare_census(a.train, a.val, a.test, out_dir=a.out, with_education=a.with_education,
                              overwrite=a.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"prepare_census: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_job(main)
