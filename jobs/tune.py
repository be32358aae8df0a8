"""Hyperparameter search campaign: Ray Tune + Optuna (TPE, define-by-run) + ASHA, tracked in MLflow.

Local (starts or joins a local Ray):
    python jobs/tune.py --config configs/tune/smoke_tiny.yaml
    python jobs/tune.py --config configs/tune/synthetic_ple.yaml budget.num_trials=32 train.epochs=8
Cluster:
    ray job submit --working-dir . -- python jobs/tune.py --config configs/tune/synthetic_ple.yaml
Overrides whose first key is a campaign field (budget, objective, scheduler, sampler, name, ...)
edit the campaign; every other key (dataset=..., train.epochs=3) edits the base experiment.
Re-running the same command (same campaign name) resumes an interrupted campaign.
"""
from ple_adatt.cli import config_parser, fail, run_job
from ple_adatt.config.loading import ConfigError
from ple_adatt.data.files import DataError
from ple_adatt.launch.fit import ResourceError
from ple_adatt.launch.tune import prepare_campaign, run_campaign


def main() -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args()
    try:
        campaign = prepare_campaign(args.config, args.overrides)  # everything validated before Ray starts
        outcome = run_campaign(campaign)
    except (ConfigError, DataError, ResourceError, ValueError) as e:
        fail(e)
    if outcome.interrupted:
        raise SystemExit(3)
    print(f"summary: {outcome.summary_dir}/summary.md\nbest config: {outcome.best_config_path}")
    if outcome.parent_run_id:
        print(f"MLflow: experiment '{outcome.name}', parent run {outcome.parent_run_id} (one child run per trial)")


if __name__ == "__main__":
    run_job(main)
