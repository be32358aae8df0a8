"""The best checkpoint as an MLflow model that scores raw rows of the dataset.

    log_checkpoint_model(uri, run_id, checkpoint)          # after training (launch/fit.py)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    model.predict(pd.read_parquet("data/synthetic/test/part-0.parquet"))
        -> DataFrame: id, p_<binary task>, probs_<multiclass task> + pred_<..>, pred_<regression task>

A pyfunc model (mlflow.pyfunc.PythonModel) holding the checkpoint folder as its artifact: loading
it builds the network from the checkpoint's config and weights (launch/inference.load_model), and
`predict` is the batch-prediction path of `jobs/predict.py` (launch/inference.BatchPredictor: the
saved preprocessing, then the model, then the per-task columns), so both always agree. A bare
`mlflow.pytorch` model would expect packed tensors, not rows of the table. The signature is
inferred from a few rows of the validation split and their predictions.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

MODEL_NAME = "model"
"""Artifact folder of the logged model in the run (`runs:/<run id>/model`)."""
SIGNATURE_ROWS = 16


class CheckpointModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw dataset rows (pandas) -> prediction columns (pandas)."""

    def load_context(self, context):
        from ple_adatt.launch.inference import BatchPredictor

        self.predictor = BatchPredictor(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import pyarrow as pa

        return self.predictor(pa.Table.from_pandas(model_input, preserve_index=False)).to_pandas()


def _sample_frame(checkpoint: str | Path):
    """A few raw rows of the checkpoint's validation split: the input example of the signature."""
    from ple_adatt.data.files import parquet_dataset, split_files
    from ple_adatt.train.checkpoint import load_config_and_preprocess

    cfg, _ = load_config_and_preprocess(checkpoint)
    spec = cfg.dataset
    cols = list(dict.fromkeys(spec.input_columns() + ([spec.id_column] if spec.id_column else [])))
    return parquet_dataset(split_files(spec, "val")).head(SIGNATURE_ROWS, columns=cols).to_pandas()


def _requirements() -> list[str]:
    """Pinned requirements of the model's environment, given so MLflow does not infer them (slow)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "torch", "pyarrow", "pandas", "numpy", "pydantic", "pyyaml", "ple-adatt"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def log_checkpoint_model(uri: str, run_id: str, checkpoint: str | Path) -> str:
    """Log the checkpoint folder (local path or URI) as the run's pyfunc model; returns its model URI."""
    from mlflow.models import infer_signature

    from ple_adatt.config import storage

    with storage.local_copy(str(checkpoint)) as local, warnings.catch_warnings():
        # MLflow's advice (integer columns, input examples, type hints) is not for the console here
        warnings.simplefilter("ignore", UserWarning)
        example = _sample_frame(local)
        wrapper = CheckpointModel()
        wrapper.load_context(type("Ctx", (), {"artifacts": {"checkpoint": local}})())
        signature = infer_signature(example, wrapper.predict(None, example))
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        # "a Python object as python_model is serialized with CloudPickle": ours is this module's class,
        # pickled by reference and importable wherever ple_adatt is installed
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=run_id):
                mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=CheckpointModel(),
                                        artifacts={"checkpoint": local}, signature=signature,
                                        pip_requirements=_requirements())
        finally:
            mlflow.set_tracking_uri(previous)
            pyfunc_log.setLevel(level)
    return f"runs:/{run_id}/{MODEL_NAME}"
