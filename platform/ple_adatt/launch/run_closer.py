"""The Tune callback that ends every trial's MLflow child run (campaigns and studies).

Its own module because it subclasses ray.tune.Callback: trial.py stays importable without Ray.
"""
from __future__ import annotations

import ray.tune

from ple_adatt.launch.trial import close_trial_run
from ple_adatt.report.tune_summary import trial_epochs, trial_status


class RunCloser(ray.tune.Callback):
    """Tune callback (driver side) that ends each trial's MLflow child run however the trial ends:
    run to the end, stopped by ASHA (its Train run is killed before fit() logs anything final), or
    failed. Small and picklable: Tune saves callbacks with the experiment and restores them."""

    def __init__(self, uri: str, experiment: str, name: str, max_t: int | None):
        self.uri, self.experiment, self.name, self.max_t = uri, experiment, name, max_t

    def _close(self, trial, error: bool) -> None:
        last = dict(trial.last_result or {})
        status = trial_status(error, trial_epochs(last), self.max_t)
        try:
            close_trial_run(self.uri, self.experiment, self.name, trial.trial_id, status, last)
        except Exception as e:  # noqa: BLE001 - never let bookkeeping stop the campaign; finish_campaign retries
            print(f"[ple-adatt] could not close the MLflow run of trial {trial.trial_id}: {e}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, error=True)
