"""Batch inference with Ray Data (actor pool): parquet in, parquet out (id + per-task predictions).

    python jobs/predict.py --run runs/synthetic-ple --data test --out results/preds   # best checkpoint
    python jobs/predict.py --checkpoint runs/synthetic-ple/epoch_0004 --data test --out results/preds
Columns: id, p_<task> (binary), probs_<task> + pred_<task> (multiclass), pred_<task> (regression).
"""
import argparse

from ple_adatt.cli import fail, run_job
from ple_adatt.launch.inference import predict_to_parquet, resolve_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a run folder (runs/<name>); with --checkpoint best|last")
    p.add_argument("--checkpoint", default="best",
                   help="best (default) | last of --run, a run folder (its best checkpoint), or a checkpoint folder")
    p.add_argument("--data", default="test", help="train|val|test of the checkpoint's dataset, or a dataset YAML")
    p.add_argument("--split", default=None, help="split of --data when it is a YAML (default: test)")
    p.add_argument("--out", required=True, help="output folder for parquet files")
    p.add_argument("--actors", type=int, default=1, help="model replicas in the actor pool")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    a = p.parse_args()
    try:
        out = predict_to_parquet(resolve_checkpoint(a.checkpoint, a.run), a.data, a.out, a.split, a.actors, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        fail(e)
    print(f"predictions written to {out}")


if __name__ == "__main__":
    run_job(main)
