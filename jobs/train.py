"""Train one experiment with Ray Train (DDP on CPU or GPU), tracked in MLflow.

Local (starts or joins a local Ray):
    python jobs/train.py --config configs/experiments/synthetic_ple.yaml train.epochs=3
Cluster:
    ray job submit --working-dir . --runtime-env-json '{"py_modules": ["platform/ple_adatt"]}' \
        -- python jobs/train.py --config configs/experiments/synthetic_ple.yaml
Relaunching with the same run name (run.name, default: the experiment name) resumes the run.
"""
from ple_adatt.cli import fail, parse_experiment, run_job
from ple_adatt.data.files import DataError
from ple_adatt.launch.fit import ResourceError, fit
from ple_adatt.launch.model_export import log_checkpoint_model
from ple_adatt.report.run_summary import print_summary


def main() -> None:
    cfg, _ = parse_experiment(__doc__.splitlines()[0])
    try:
        result = fit(cfg)
    except (DataError, ResourceError, ValueError) as e:  # ValueError: a model the workers could not build
        fail(e)
    if result.mlflow_run_id and (result.best_checkpoint_path or result.checkpoint_path):
        # The best checkpoint as the run's MLflow model: mlflow.pyfunc.load_model(uri).predict(parquet rows)
        result.model_uri = log_checkpoint_model(result.tracking_uri, result.mlflow_run_id,
                                                result.best_checkpoint_path or result.checkpoint_path)
    print_summary(cfg, result)


if __name__ == "__main__":
    run_job(main)
