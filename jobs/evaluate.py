"""Evaluate a checkpoint on any split: every task metric (and oracle gaps), printed and written as JSON.

    python jobs/evaluate.py --run runs/synthetic-ple --data test            # the run's best checkpoint
    python jobs/evaluate.py --run runs/synthetic-ple --checkpoint last --data test
    python jobs/evaluate.py --checkpoint runs/synthetic-ple/epoch_0004 --data test
    python jobs/evaluate.py --run runs/synthetic-ple --data test --baseline runs/synthetic-ple-gbdt   # + GBDT column
    python jobs/evaluate.py --checkpoint ... --data other/dataset.yaml --split val --out metrics.json
"""
import argparse
import json
from pathlib import Path

from ple_adatt.cli import fail, run_job
from ple_adatt.config import storage
from ple_adatt.launch.baseline import comparison_lines, load_baseline
from ple_adatt.launch.inference import evaluate_checkpoint, resolve_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a run folder (runs/<name>); with --checkpoint best|last")
    p.add_argument("--checkpoint", default="best",
                   help="best (default) | last of --run, a run folder (its best checkpoint), or a checkpoint "
                        "folder (holds state.pt, config.yaml); local or a URI")
    p.add_argument("--data", default="val", help="train|val|test of the checkpoint's dataset, or a dataset YAML")
    p.add_argument("--split", default=None, help="split of --data when it is a YAML (default: test)")
    p.add_argument("--baseline", default=None, help="a GBDT baseline.json (or its folder) from jobs/baseline.py: "
                                                     "adds a gbdt column")
    p.add_argument("--out", default=None, help="JSON file to write (default: <checkpoint>/eval_<split>.json)")
    a = p.parse_args()
    try:
        if a.out and storage.local_path(a.out) is not None:  # checked before the metrics are computed
            out_path = Path(storage.local_path(a.out))
            if out_path.is_dir():
                raise IsADirectoryError(f"--out {a.out} is a folder; give a JSON file path")
            out_path.parent.mkdir(parents=True, exist_ok=True)
        ckpt = resolve_checkpoint(a.checkpoint, a.run)
        res = evaluate_checkpoint(ckpt, a.data, a.split)
    except (ValueError, OSError) as e:
        fail(e)
    if a.baseline:
        res["baseline"] = a.baseline
        print("\n".join(comparison_lines(res["metrics"], load_baseline(a.baseline), res["split"])))
    else:
        for k, v in sorted(res["metrics"].items()):
            print(f"{k:<40} {v:.6f}")
    for line in res["notes"]:  # unseen categories / non-finite values in the evaluated split
        print(f"note: {line}")
    out = a.out or storage.join(ckpt, f"eval_{res['split']}.json")  # local or s3://...
    storage.write_text(out, json.dumps(res, indent=2, sort_keys=True))
    print(f"written: {out}")


if __name__ == "__main__":
    run_job(main)
