"""Ablation study: variants x seeds (x sweep levels) on Ray Tune's grid, then a statistics report.

Local (starts or joins a local Ray):
    python jobs/ablate.py --config configs/ablation/adatt_on_off.yaml
    python jobs/ablate.py --config configs/ablation/architectures.yaml "seeds=[0,1,2]" train.epochs=3
Cluster:
    ray job submit --working-dir . -- python jobs/ablate.py --config configs/ablation/adatt_on_off.yaml
Overrides whose first key is a study field (seeds, variants, baseline, alpha, ...) edit the study;
every other key edits the base experiment. Re-running the same command resumes the study; a changed
design (seeds, variants, levels, base) under the same name is refused: pass name=<new name>.
The report lands in <run.storage_path>/<study>/report/ (report.md, report.html) and in MLflow.
"""
from ple_adatt.cli import config_parser, fail, run_job
from ple_adatt.config.loading import ConfigError
from ple_adatt.data.files import DataError
from ple_adatt.launch.ablate import prepare_study, run_study
from ple_adatt.launch.fit import ResourceError


def main() -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args()
    try:
        study = prepare_study(args.config, args.overrides)  # every variant validated before Ray starts
        outcome = run_study(study)
    except (ConfigError, DataError, ResourceError, ValueError) as e:
        fail(e)
    if outcome.interrupted:
        raise SystemExit(3)
    print(f"report: {outcome.report_files['report.md']}\n        {outcome.report_files['report.html']}")


if __name__ == "__main__":
    run_job(main)
