"""GBDT reference for any dataset: LightGBM per task on the model's splits and features, as Ray tasks.

    python jobs/baseline.py --config configs/experiments/synthetic_ple.yaml
    python jobs/baseline.py --config configs/smoke/tiny.yaml dataset=/path/to/dataset.yaml --out results/gbdt
Writes baseline.json + baseline.csv (default: <run.storage_path>/<run name>-gbdt/) and one MLflow run
with the model's metric names (val/<task>/auc, test/<task>/rmse, ...). Compare with a model run:
    python jobs/evaluate.py --run runs/<name> --data val --baseline runs/<name>-gbdt
"""
from ple_adatt.cli import fail, parse_experiment, run_job
from ple_adatt.data.files import DataError
from ple_adatt.launch.baseline import run_baseline


def main() -> None:
    cfg, args = parse_experiment(__doc__.splitlines()[0], extra=[("--out", "output folder (default: "
                                                                           "<run.storage_path>/<run name>-gbdt)")])
    try:
        res = run_baseline(cfg, out_dir=args.out)
    except (DataError, ValueError) as e:
        fail(e)
    for k, v in sorted(res["metrics"].items()):
        if not k.endswith("/n"):
            print(f"{k:<40} {v:.6f}")
    print(f"written: {res['files']['json']} and baseline.csv" + (
        f"; MLflow run {res['mlflow_run_id']} at {res['tracking_uri']}" if res.get("mlflow_run_id") else ""))


if __name__ == "__main__":
    run_job(main)
