"""The best checkpoint logged as an MLflow pyfunc model reloads and scores raw parquet rows (no Ray)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.launch.inference import BatchPredictor
from ple_adatt.launch.model_export import log_checkpoint_model
from ple_adatt.tracking import mlflow_tracking as mt
from ple_adatt.train.build import build_model
from ple_adatt.train.checkpoint import save_checkpoint


def test_logged_model_reloads_and_predicts_on_a_parquet_frame(tiny_dataset, tmp_path, one_thread):
    import mlflow.pyfunc
    import pyarrow as pa

    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}"])
    state = fit_preprocessing(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=0,
                           history=[], cfg=cfg, preprocess=state)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = mt.start_run(uri, "export", "r", {})

    model_uri = log_checkpoint_model(uri, run_id, ckpt)

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(model_uri)
    frame = pd.read_parquet(next((tiny_dataset.parent / "test").glob("*.parquet")))  # raw rows, labels included
    out = loaded.predict(frame)
    assert list(out["id"]) == list(frame["id"])
    assert {"p_click", "probs_stage", "pred_stage", "pred_value"} <= set(out.columns)
    assert out["p_click"].between(0, 1).all()
    # Same numbers as jobs/predict.py's path on the same rows.
    direct = BatchPredictor(str(ckpt))(pa.Table.from_pandas(frame, preserve_index=False)).to_pandas()
    np.testing.assert_allclose(out["pred_value"], direct["pred_value"], rtol=1e-6)
    assert loaded.metadata.get_input_schema() is not None and loaded.metadata.get_output_schema() is not None


def test_run_records_commit_dataset_inputs_phase_tag_and_model_view(tiny_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from ple_adatt.launch.fit import _log_inputs
    from ple_adatt.tracking.lineage import GIT_COMMIT_TAG, git_tags

    assert git_tags(tmp_path) == {}  # not a git checkout (e.g. a ray job working_dir): no tags, no error
    assert GIT_COMMIT_TAG in git_tags()  # this checkout
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = mt.start_run(uri, "lineage", "r", {}, tags=git_tags())
    _log_inputs(cfg, uri, run_id, {"train": 600, "val": 200})
    mt.RunLogger(uri, run_id).log_epoch({"val/loss": 0.5, "train/loss": 0.7}, step=3, tags={"ple_adatt.phase": "1"})

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags[GIT_COMMIT_TAG] and run.data.tags["ple_adatt.git_dirty"] in ("true", "false")
    assert run.data.tags["ple_adatt.phase"] == "1" and "epoch" not in run.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/loss")] == [(3, 0.5)]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    import json

    assert json.loads(inputs["train"].profile)["num_rows"] == 600 and len(inputs["train"].digest) == 16
    assert "x0" in inputs["train"].schema and json.loads(inputs["val"].source)["files"]
