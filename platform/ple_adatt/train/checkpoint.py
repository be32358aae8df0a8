"""What a checkpoint holds, and reading it back (for resume, evaluation and prediction).

Layout of a checkpoint directory:
    state.pt         model + optimizer + scheduler + scaler state, epoch, metric history, extras
    preprocess.json  train-split statistics (scalers, vocabularies) used to pack inputs
    config.yaml      the fully resolved experiment config
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

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


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a ple-adatt checkpoint: {path} is missing")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_config_and_preprocess(directory: str | Path) -> tuple[ExperimentConfig, PreprocessState]:
    d = Path(directory)
    for f in (CONFIG_FILE, PREPROCESS_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"not a ple-adatt checkpoint: {d / f} is missing")
    cfg = ExperimentConfig.model_validate(yaml.safe_load((d / CONFIG_FILE).read_text()))
    return cfg, PreprocessState.from_dict(json.loads((d / PREPROCESS_FILE).read_text()))
