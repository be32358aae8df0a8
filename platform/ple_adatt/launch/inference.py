"""Evaluation and batch prediction from a checkpoint, using the preprocessing state stored in it.

`evaluate_checkpoint` streams parquet in-process (record batches; bounded memory).
`predict_to_parquet` runs Ray Data `map_batches` over an actor pool, for tables larger than memory.
Checkpoints, data and the prediction folder may be local paths or URIs (config/storage.py).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ple_adatt.config import storage
from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.config.loading import load_dataset
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import check_dataset, parquet_dataset
from ple_adatt.data.reading import read_split
from ple_adatt.data.preprocess import Packer, PreprocessState, input_shapes, packed_batches
from ple_adatt.data.quality import feature_report
from ple_adatt.data.targets import original_units, to_original_units
from ple_adatt.model.sidecars import sidecars_of
from ple_adatt.train.build import build_model
from ple_adatt.train.calibration import calibration_metrics
from ple_adatt.train.checkpoint import load_config_and_preprocess, load_model_weights, load_state
from ple_adatt.train.evaluate import predict_batches
from ple_adatt.train.metrics import evaluate_predictions, sigmoid, softmax
from ple_adatt.train.monitor import collapse_flags, prediction_spreads
from ple_adatt.train.step import validation_loss

SPLITS = ("train", "val", "test")
CHECKPOINT_CHOICES = ("best", "last")


def resolve_checkpoint(checkpoint: str, run: str | None = None) -> str:
    """The checkpoint folder evaluate/predict read: ``checkpoint`` is a checkpoint folder (holds
    state.pt), a run folder (its best checkpoint), or best|last of the run folder ``run``. A run
    folder names its checkpoints in best_checkpoint.json (written when the run finishes; best by
    train.checkpoint_metric)."""
    if checkpoint in CHECKPOINT_CHOICES:
        if run is None:
            raise ValueError(f"--checkpoint {checkpoint} needs --run <run folder> (or pass a checkpoint/run folder)")
        which, folder = checkpoint, run
    elif storage.is_file(storage.join(checkpoint, "state.pt")):
        return checkpoint
    else:
        which, folder = "best", checkpoint
    index = storage.join(folder, "best_checkpoint.json")
    if not storage.is_file(index):
        raise FileNotFoundError(f"{folder} is neither a checkpoint folder (no state.pt) nor a finished run folder "
                                f"(no best_checkpoint.json); pass a checkpoint folder such as {folder}/epoch_0004")
    names = json.loads(storage.read_text(index))
    chosen = names.get("best") if which == "best" else names.get("latest")
    return chosen or names["latest"]  # a run without a ranked checkpoint: its latest


def load_model(checkpoint: str | Path) -> tuple[ExperimentConfig, PreprocessState, torch.nn.Module]:
    cfg, state = load_config_and_preprocess(checkpoint)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    load_model_weights(model, load_state(checkpoint)["model"], str(checkpoint))
    return cfg, state.__class__.from_dict(state.to_dict()), model.eval()


def resolve_data(cfg: ExperimentConfig, data: str, split: str | None) -> tuple[DatasetSpec, str]:
    """`data` is a split name of the checkpoint's dataset, or a dataset YAML (then `split`, default test)."""
    if data in SPLITS:
        return cfg.dataset, data
    spec = load_dataset(data)
    missing = [t for t in cfg.task_names() if t not in [x.name for x in spec.tasks]]
    if missing:
        raise ValueError(f"dataset {data} lacks the model's tasks {missing}")
    return spec, split or "test"


def _torch_batches(spec: DatasetSpec, state: PreprocessState, tasks: list[str], split: str, batch_rows: int):
    for arrays in packed_batches(spec, state, tasks, split, batch_rows):
        yield to_tensors(arrays)


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy views from Arrow are read-only; torch wants writable memory, so copy those."""
    return {k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous else np.array(v))
            for k, v in arrays.items()}


def evaluate_checkpoint(checkpoint: str | Path, data: str, split: str | None = None, batch_rows: int = 8192) -> dict:
    cfg, state, model = load_model(checkpoint)
    spec, split = resolve_data(cfg, data, split)
    check_dataset(spec, (split,), cfg.task_names())
    quality = feature_report(spec, state, (split,))  # unseen categories / non-finite values, counted
    tasks = cfg.task_names()
    side = sidecars_of(model)
    if side is not None:  # count SAE latent firing over the split (sparsity, dead features)
        side.track_sae = True
    preds = predict_batches(model, _torch_batches(spec, state, tasks, split, batch_rows), tasks, torch.device("cpu"))
    types = {t: spec.task(t).type for t in tasks}
    metrics = {**validation_loss(cfg, preds), **evaluate_predictions(types, to_original_units(preds, state.targets)),
               **prediction_spreads(types, preds),
               # the evidential heads score in the units they train in (coverage does not depend on them)
               **calibration_metrics(types, preds, cfg.model.evidential.interval),
               **(side.sae_stats() if side is not None else {})}
    metrics.update(collapse_flags(types, metrics, prefix=""))
    return {"checkpoint": str(checkpoint), "dataset": spec.name, "split": split, "metrics": metrics,
            "nonfinite": quality.nonfinite[split], "unseen": quality.unseen[split], "notes": quality.lines()}


def prediction_columns(cfg: ExperimentConfig, out: dict[str, torch.Tensor], targets: dict[str, dict] | None = None,
                       model: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Model logits -> user-facing columns: p_<t> (binary), probs_<t> + pred_<t> (multiclass), pred_<t>
    (regression, in the label's original units: ``targets`` is PreprocessState.targets); with evidential
    heads (``model`` given), u_<t>: the per-prediction uncertainty of the same forward (C/S for
    classification, β/(v(α−1)) for regression; docs/model-task-side.md)."""
    cols: dict[str, np.ndarray] = {}
    side = sidecars_of(model) if model is not None else None
    for t in cfg.task_names():
        ttype, z = cfg.dataset.task(t).type, out[t].float().cpu().numpy()
        if ttype == "binary":
            cols[f"p_{t}"] = sigmoid(z).astype(np.float32)
        elif ttype in ("multiclass", "contrastive"):
            p = softmax(z).astype(np.float32)
            cols[f"probs_{t}"], cols[f"pred_{t}"] = p, p.argmax(1)
        else:
            cols[f"pred_{t}"] = original_units((targets or {}).get(t), z).astype(np.float32)
        if side is not None and "u" in (u := side.uncertainty_arrays(t)):
            cols[f"u_{t}"] = u["u"].detach().float().cpu().numpy()
    return cols


class BatchPredictor:
    """Ray Data actor: loads the checkpoint once, then packs and scores pyarrow batches."""

    def __init__(self, checkpoint: str):
        self.cfg, self.state, self.model = load_model(checkpoint)
        self.packer = Packer(self.cfg.dataset, self.state, tasks=[], with_ids=True)

    def __call__(self, table: pa.Table) -> pa.Table:
        packed = self.packer(table)
        ids = packed.pop("id", np.arange(table.num_rows))
        with torch.no_grad():
            out = self.model(to_tensors(packed))
        cols = {"id": pa.array(ids)}
        for k, v in prediction_columns(self.cfg, out, self.state.targets, self.model).items():
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) if v.ndim == 2 else pa.array(v)
        return pa.table(cols)


def staging_dir(out: str) -> str:
    """A new, uniquely named hidden folder beside `out` (created here, so it can be nobody else's)."""
    parent = Path(out).parent
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".{Path(out).name}.partial-")


def duplicate_ids(folder: str, column: str = "id") -> int:
    """Rows of a prediction folder whose id occurs more than once (ids are kept as given; a
    repeated id usually means the input repeats rows). Reads only the id column."""
    files = storage.list_files(folder, ".parquet")
    if not files:
        return 0
    ids = parquet_dataset(files).to_table(columns=[column]).column(0)
    counts = pc.value_counts(ids)
    c = counts.field("counts").to_numpy(zero_copy_only=False)
    return int(c[c > 1].sum())


def predict_to_parquet(checkpoint: str | Path, data: str, out_dir: str | Path, split: str | None = None,
                       actors: int = 1, batch_rows: int = 4096, overwrite: bool = False) -> Path | str:
    from ple_adatt.launch.fit import ensure_ray, quiet_data_progress

    cfg, _ = load_config_and_preprocess(checkpoint)
    spec, split = resolve_data(cfg, data, split)
    remote = storage.local_path(str(out_dir)) is None
    out = str(out_dir).rstrip("/") if remote else str(Path(storage.local_path(str(out_dir))))
    if storage.list_files(out) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; pass --overwrite to replace it")
    cols = list(dict.fromkeys(spec.input_columns() + ([spec.id_column] if spec.id_column else [])))
    ensure_ray()
    quiet_data_progress()
    # Locally a new hidden folder next to `out` (unique: never a folder of the user's) renamed into
    # place, so readers never see a half-written folder; object stores have no folder rename, so
    # there the files are written in place.
    holder = None if remote else staging_dir(out)
    tmp = out if remote else str(Path(holder) / "data")
    try:
        (read_split(spec, split, cols)
         .map_batches(BatchPredictor, fn_constructor_args=(str(checkpoint),), concurrency=actors,
                      batch_format="pyarrow", batch_size=batch_rows)
         .write_parquet(tmp))
        if not remote:
            shutil.rmtree(out, ignore_errors=True)  # the output folder itself (empty, or --overwrite)
            Path(tmp).rename(out)
    finally:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)  # ours: created by staging_dir for this call
    duplicates = duplicate_ids(out, "id") if cfg.dataset.id_column else 0  # without one, ids are row numbers
    if duplicates:
        print(f"[ple-adatt] {duplicates} prediction row(s) share an id with another row (kept; see "
              f"_SOURCE.json duplicate_ids)", flush=True)
    storage.write_text(storage.join(out, "_SOURCE.json"),
                       json.dumps({"checkpoint": str(checkpoint), "dataset": spec.name, "split": split,
                                   "duplicate_ids": duplicates}))
    return Path(out) if not remote else out
