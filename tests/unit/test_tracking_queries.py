"""MLflow reads (tracking/queries.py) and the adaTT diagnostics built from them, on a real local store."""
import json
import time

import numpy as np
import pytest

from ple_adatt.report.results import adatt_diagnostics_from_mlflow
from ple_adatt.tracking import mlflow_tracking as mt
from ple_adatt.tracking import queries


def test_queries_and_adatt_diagnostics_on_a_local_store(tmp_path):
    uri = mt.resolve_tracking_uri(None, str(tmp_path))
    parent, _ = mt.start_run(uri, "exp", "study-s", {}, tags={"kind": "study", "name": "s"})
    time.sleep(0.01)  # start times are in ms: make "most recent" unambiguous
    later, _ = mt.start_run(uri, "other-exp", "study-s-again", {}, tags={"kind": "study", "name": "s"})
    exp_id = queries.experiment_of(uri, parent)
    assert queries.run_by_name(uri, exp_id, "study-s").info.run_id == parent
    assert queries.run_by_name(uri, exp_id, "nope") is None
    # the most recent run with the tags, across experiments
    assert queries.latest_run_with_tags(uri, {"kind": "study", "name": "s"}).info.run_id == later
    assert queries.latest_run_with_tags(uri, {"kind": "study", "name": "t"}) is None

    affinity = {"ple": [[1.0, 0.2], [0.4, 1.0]]}
    for seed, variant in enumerate(("ple", "ple", "mmoe")):
        rid, _ = mt.start_run(uri, "exp", f"s-{seed}", {}, parent_run_id=parent,
                              tags={"variant": variant, "seed": str(seed)})
        log = mt.RunLogger(uri, rid)
        for epoch in range(3):
            log.log_metrics({"adatt/transfer_entropy": 1.0 - 0.1 * epoch + seed}, step=epoch)
        if variant == "ple":  # the mmoe run has no affinity artifact: no heatmap, entropy still kept
            path = tmp_path / str(seed) / "affinity_final.json"
            path.parent.mkdir()
            path.write_text(json.dumps({"matrix": (np.asarray(affinity["ple"]) * (1 + seed)).tolist(),
                                        "tasks": ["a", "b"]}))
            log.log_artifact(path, "adatt")
        log.finish("FINISHED")
    running, _ = mt.start_run(uri, "exp", "s-running", {}, parent_run_id=parent, tags={"variant": "ple", "seed": "9"})
    assert len(queries.finished_child_runs(uri, parent)) == 3  # the unfinished child is left out
    assert queries.metric_history(uri, running, "adatt/transfer_entropy") == []
    assert queries.json_artifact(uri, running, "adatt/affinity_final.json") is None

    diag = adatt_diagnostics_from_mlflow(uri, parent, {})
    assert len(diag.entropy) == 9 and set(diag.entropy["variant"]) == {"ple", "mmoe"}
    assert diag.entropy.query("seed == 2 and epoch == 2")["transfer_entropy"].item() == pytest.approx(2.8)
    assert set(diag.affinity) == {"ple"}
    mean, tasks = diag.affinity["ple"]
    assert tasks == ["a", "b"] and mean == pytest.approx(np.asarray(affinity["ple"]) * 1.5)  # seeds 0, 1


def test_a_trial_run_ends_with_tunes_status_whatever_the_worker_wrote(tmp_path):
    """Tune's status is the authority for a trial's child run (the CI failure of stop 22: a trial Tune
    stopped at max_t had its dying worker mark the run FAILED after the closer ended it FINISHED)."""
    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.trial import close_trial_run, trial_run_name

    uri = mt.resolve_tracking_uri(None, str(tmp_path))
    ids = {t: mt.start_run(uri, "camp", trial_run_name("camp", t), {})[0] for t in ("a", "b", "c")}
    mt.RunLogger(uri, ids["a"]).finish("FAILED")  # what a torn-down worker wrote
    close_trial_run(uri, "camp", "camp", "a", "completed", {"val/loss": 0.5, "epoch": 1})
    close_trial_run(uri, "camp", "camp", "b", "early_stopped", {"val/loss": 0.7, "epoch": 0})
    close_trial_run(uri, "camp", "camp", "c", "error", None)
    client = MlflowClient(uri)
    got = {t: client.get_run(i) for t, i in ids.items()}
    assert {t: r.info.status for t, r in got.items()} == {"a": "FINISHED", "b": "KILLED", "c": "FAILED"}
    assert {t: r.data.tags["tune.status"] for t, r in got.items()} == {
        "a": "completed", "b": "early_stopped", "c": "error"}
    # a run still RUNNING gets the last reported metrics as an artifact
    assert [f.path for f in client.list_artifacts(ids["b"])] == ["final_metrics.json"]
    close_trial_run(uri, "camp", "camp", "missing", "completed", None)  # no run: nothing to do, no error
