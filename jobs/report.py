"""Regenerate an ablation report from MLflow, without rerunning anything.

    python jobs/report.py --config configs/ablation/adatt_on_off.yaml          # store and name from the study
    python jobs/report.py --study adatt_on_off --tracking-uri sqlite:////abs/runs/mlflow.db [--out DIR]
Default --tracking-uri: the local store runs/mlflow.db; default --out: the study's report folder.
"""
import argparse

from ple_adatt.cli import fail, run_job
from ple_adatt.config.loading import ConfigError
from ple_adatt.launch.ablate import prepare_study, regenerate_report
from ple_adatt.launch.fit import storage_dir
from ple_adatt.tracking.mlflow_tracking import resolve_tracking_uri


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--study", help="study name (the study YAML's name:)")
    src.add_argument("--config", help="study YAML; its base experiment gives the MLflow store")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under runs/)")
    p.add_argument("--out", help="output folder (default: <storage>/<study>/report)")
    p.add_argument("overrides", nargs="*", help="with --config: the overrides the study was run with")
    args = p.parse_args()
    try:
        if args.config:
            study = prepare_study(args.config, args.overrides)
            name, cfg = study.config.name, study.base_cfg
            uri = args.tracking_uri or resolve_tracking_uri(cfg.tracking.uri, storage_dir(cfg))
        else:
            name, uri = args.study, args.tracking_uri or resolve_tracking_uri(None, "runs")
        files = regenerate_report(name, uri, args.out)
    except (ConfigError, ValueError) as e:
        fail(e)
    print(f"report: {files['report.md']}\n        {files['report.html']}")


if __name__ == "__main__":
    run_job(main)
