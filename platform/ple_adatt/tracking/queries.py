"""Every MLflow read of the platform, through the public `MlflowClient` API.

Writes live in `mlflow_tracking.py`; the launch and report layers read runs only through here, so
the filter strings (tag names, run status) are written once.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

RUN_NAME_TAG = "ple_adatt.run_name"
"""Tag holding a run's deterministic name (set by mlflow_tracking.start_run, searched here)."""
TASK_TYPES_TAG = "ple_adatt.task_types"
"""Tag of every sweep trial run: json {task: task type} (set by launch/trial.py, read by report/results.py)."""


def quoted(value: str) -> str:
    """`value` as an MLflow filter-string literal. MLflow has no escape inside quotes, so a value
    holding both quote kinds cannot be searched for and is refused (run names are validated to
    hold neither: config/schema.SAFE_NAME)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters and cannot be searched for in MLflow")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def run_by_name(uri: str, experiment_id: str, run_name: str):
    """The run tagged with this run name in the experiment, or None."""
    found = client(uri).search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = {quoted(run_name)}",
                                    max_results=1)
    return found[0] if found else None


def experiment_of(uri: str, run_id: str) -> str:
    """Experiment id of a run."""
    return client(uri).get_run(run_id).info.experiment_id


def finished_child_runs(uri: str, parent_run_id: str) -> list:
    """The FINISHED child runs of a parent run (a study's runs), as mlflow Run entities."""
    return list(client(uri).search_runs(
        [experiment_of(uri, parent_run_id)],
        f"tags.`mlflow.parentRunId` = {quoted(parent_run_id)} and attributes.status = 'FINISHED'", max_results=10000))


def latest_run_with_tags(uri: str, tags: dict[str, str]):
    """The most recently started run, in any experiment of the store, carrying all these tags; or None."""
    c = client(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    if not exps:
        return None
    where = " and ".join(f"tags.`{k}` = {quoted(v)}" for k, v in tags.items())
    runs = c.search_runs(exps, where, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of one run."""
    return [(m.step, m.value) for m in client(uri).get_metric_history(run_id, key)]


def json_artifact(uri: str, run_id: str, path: str):
    """A run's JSON artifact, parsed; None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as d:
        try:
            local = client(uri).download_artifacts(run_id, path, d)
        except Exception:  # noqa: BLE001 - MLflow raises different types per store for a missing file
            return None
        return json.loads(Path(local).read_text())
