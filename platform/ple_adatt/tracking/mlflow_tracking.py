"""MLflow tracking through an explicit client and run id (no global active-run state).

The driver opens (or re-opens, on resume) one MLflow run per training run and passes its id to
the workers; rank 0 logs per-epoch metrics with a `RunLogger`, every other rank gets a
`NullLogger` with the same methods, so the loop has no `if rank == 0` branches. Reads: queries.py.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ple_adatt.config import storage
from ple_adatt.tracking.queries import RUN_NAME_TAG, run_by_name
from ple_adatt.tracking.store import prepared

MAX_PARAM_LEN = 6000
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3 opens an experiment in the view its kind names; without the tag the UI may guess the
GenAI one (traces, token usage). `custom_model_development` is the model-training view."""


def resolve_tracking_uri(uri: str | None, storage_path: str) -> str:
    """None -> an absolute sqlite file under a local storage path (workers chdir, so never
    relative). Remote storage (s3://...) cannot hold a sqlite database: a tracking server is required."""
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return prepared("sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve()))
        return uri
    local = storage.local_path(storage_path)
    if local is None:
        raise ValueError(f"tracking.uri is unset and run.storage_path={storage_path} is remote storage, which "
                         f"cannot hold the default local MLflow database: set tracking.uri=http://<host>:5000 (an "
                         f"`mlflow server --artifacts-destination s3://...`, see README 'On a Ray cluster') or "
                         f"tracking.enabled=false")
    path = Path(local) / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return prepared(f"sqlite:///{path}")  # created atomically, or refused when half-built (tracking/store.py)


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(uri: str, name: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
            if k not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri), tags=EXPERIMENT_TAGS)


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """Return (run_id, resumed). A run with the same run name tag in the experiment is re-opened."""
    client = _client(uri)
    exp_id = get_or_create_experiment(uri, experiment)
    found = run_by_name(uri, exp_id, run_name)
    if found is not None:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    all_tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id, False


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    client = _client(uri)
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


class RunLogger:
    """Logs to one MLflow run by id. Non-finite values are skipped (MLflow rejects NaN)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_epoch(metrics, step)

    def log_epoch(self, metrics: dict[str, float], step: int, tags: dict[str, str] | None = None) -> None:
        """Metrics (and tags) of one step in one `log_batch` call (MLflow takes up to 1000 entities a call)."""
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        items = [Metric(_clean(k), float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(1, len(items)), 900):
            self.client.log_batch(self.run_id, metrics=items[i:i + 900], tags=tag_items if i == 0 else [])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class NullLogger:
    """Same methods as RunLogger; does nothing (non-zero ranks, tracking disabled)."""

    def log_metrics(self, metrics, step):
        pass

    def log_epoch(self, metrics, step, tags=None):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tag(self, key, value):
        pass

    def finish(self, status="FINISHED"):
        pass


def _clean(key: str) -> str:
    # MLflow allows alphanumerics, _ - . space / ; map anything else to _
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def make_logger(uri: str | None, run_id: str | None, rank: int = 0):
    return RunLogger(uri, run_id) if (uri and run_id and rank == 0) else NullLogger()
