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
from ple_adatt.report.run_summary import print_summary


def main() -> None:
    cfg, _ = parse_experiment(__doc__.splitlines()[0])
    try:
        result = fit(cfg)
    except (DataError, ResourceError, ValueError) as e:  # ValueError: a model the workers could not build
        fail(e)
    print_summary(cfg, result)


if __name__ == "__main__":
    run_job(main)
