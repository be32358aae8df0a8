"""What a checkpoint holds, and reading it back (for resume, evaluation and prediction).

Layout of a checkpoint directory:
    state.pt         model + optimizer + scheduler + scaler state, epoch, metric history, extras
    preprocess.json  train-split statistics (scalers, vocabularies) used to pack inputs
    config.yaml      the fully resolved experiment config

A checkpoint is read from a local folder or a URI (s3://.../epoch_0003, config/storage.py), so
evaluation and prediction work on the cluster's shared storage as they are.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from ple_adatt.config import storage
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.preprocess import PreprocessState

STATE_FILE, PREPROCESS_FILE, CONFIG_FILE = "state.pt", "preprocess.json", "config.yaml"


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer, scheduler, scaler,
                    epoch: int, history: list[dict], cfg: ExperimentConfig, preprocess: PreprocessState,
                    extra: dict[str, Any] | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "history": history,
        "extra": extra or {},
    }, d / STATE_FILE)
    (d / PREPROCESS_FILE).write_text(json.dumps(preprocess.to_dict()))
    (d / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return d


def _read(directory: str | Path, name: str) -> bytes:
    path = storage.join(str(directory), name)
    if not storage.is_file(path):
        raise FileNotFoundError(f"not a ple-adatt checkpoint: {path} is missing")
    return storage.read_bytes(path)


def load_state(directory: str | Path) -> dict[str, Any]:
    """The state.pt of a checkpoint folder (local path or URI)."""
    return torch.load(io.BytesIO(_read(directory, STATE_FILE)), map_location="cpu", weights_only=True)


def load_config_and_preprocess(directory: str | Path) -> tuple[ExperimentConfig, PreprocessState]:
    """The resolved config and preprocessing state of a checkpoint folder (local path or URI)."""
    raw_cfg, raw_state = _read(directory, CONFIG_FILE), _read(directory, PREPROCESS_FILE)
    cfg = ExperimentConfig.model_validate(yaml.safe_load(raw_cfg.decode()))
    return cfg, PreprocessState.from_dict(json.loads(raw_state.decode()))
