"""What a checkpoint holds, and reading it back (for resume, evaluation and prediction).

Layout of a checkpoint directory (format 2):
    state.pt         tensors only: model, optimizer, scheduler, scaler, loss-weighting and adaTT state
                     (read with torch.load(weights_only=True): an allowlist unpickler that cannot run code)
    meta.json        epoch, metric history, training phase, world size, tasks, config hash, tensor shapes
    preprocess.json  train-split statistics (scalers, vocabularies) used to pack inputs
    config.yaml      the fully resolved experiment config
    manifest.json    sha256 and size of every file above; written LAST

Every file is written to a temporary name and renamed into place, and the manifest goes last, so a
folder without a manifest is an interrupted write (or an old-format checkpoint) and a file whose
checksum differs is truncated or altered: both are refused with the file named (`CheckpointError`),
before any byte of state.pt is unpickled. A checkpoint is read from a local folder or a URI
(s3://.../epoch_0003, config/storage.py), so evaluation and prediction work on shared storage.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ple_adatt.config import storage
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.preprocess import PreprocessState

STATE_FILE, META_FILE, PREPROCESS_FILE, CONFIG_FILE = "state.pt", "meta.json", "preprocess.json", "config.yaml"
MANIFEST_FILE = "manifest.json"
FORMAT = 2
# Extra entries that are plain values (JSON, in meta.json); every other extra holds tensors (state.pt).
_JSON_EXTRAS = ("phase", "world_size")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: incomplete, altered, old-format or from another config."""


def config_hash(cfg: ExperimentConfig) -> str:
    """sha256 of the resolved config (YAML, sorted keys): equal hashes = the same experiment."""
    return hashlib.sha256(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write then rename: a reader (or a crash) never sees a half-written file under the final name."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer, scheduler, scaler,
                    epoch: int, history: list[dict], cfg: ExperimentConfig, preprocess: PreprocessState,
                    extra: dict[str, Any] | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / MANIFEST_FILE).unlink(missing_ok=True)  # rewriting a folder: it is incomplete until the end
    extra = dict(extra or {})
    model_state = model.state_dict()
    buf = io.BytesIO()
    torch.save({"model": model_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "extra": {k: v for k, v in extra.items() if k not in _JSON_EXTRAS}}, buf)
    meta = {"format": FORMAT, "epoch": epoch, "history": history,
            "extra": {k: extra[k] for k in _JSON_EXTRAS if k in extra},
            "tasks": cfg.task_names(), "config_sha256": config_hash(cfg),
            "shapes": {k: list(v.shape) for k, v in model_state.items()}}
    files = {STATE_FILE: buf.getvalue(),
             META_FILE: json.dumps(meta).encode(),
             PREPROCESS_FILE: json.dumps(preprocess.to_dict()).encode(),
             CONFIG_FILE: yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode()}
    for name, data in files.items():
        _write_atomic(d / name, data)
    manifest = {"format": FORMAT, "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
                                            for n, b in files.items()}}
    _write_atomic(d / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return d


def _read(directory: str | Path, name: str) -> bytes:
    path = storage.join(str(directory), name)
    if not storage.is_file(path):
        raise CheckpointError(f"not a ple-adatt checkpoint: {path} is missing")
    return storage.read_bytes(path)


def verified_files(directory: str | Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named files of a checkpoint, each checked against the manifest (size and sha256)."""
    where = str(directory)
    if not storage.is_file(storage.join(where, MANIFEST_FILE)):
        if storage.is_file(storage.join(where, STATE_FILE)) and not storage.is_file(storage.join(where, META_FILE)):
            raise CheckpointError(
                f"checkpoint {where} is in the old format (state.pt without manifest.json), which older "
                f"ple-adatt loaded by unpickling; it is not read. Retrain, or load it once yourself in a "
                f"trusted environment and write it again with train/checkpoint.save_checkpoint")
        raise CheckpointError(f"checkpoint {where} has no {MANIFEST_FILE}: its write was interrupted (or it is "
                              f"not a ple-adatt checkpoint); use an earlier checkpoint of the run")
    try:
        manifest = json.loads(_read(where, MANIFEST_FILE))
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} is unreadable ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {where}: format {manifest.get('format')} (this ple-adatt reads format {FORMAT})")
    out = {}
    for name in names:
        if name not in entries:
            raise CheckpointError(f"checkpoint {where}: {name} is not listed in {MANIFEST_FILE}")
        data = _read(where, name)
        want, got = entries[name], hashlib.sha256(data).hexdigest()
        if len(data) != want["bytes"] or got != want["sha256"]:
            raise CheckpointError(
                f"checkpoint {where}: {name} is truncated or altered ({len(data)} bytes, sha256 {got[:12]}; the "
                f"manifest says {want['bytes']} bytes, sha256 {want['sha256'][:12]}); use another checkpoint")
        out[name] = data
    return out


def load_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a verified checkpoint (epoch, history, tasks, config hash, tensor shapes)."""
    return json.loads(verified_files(directory, (META_FILE,))[META_FILE])


def load_state(directory: str | Path) -> dict[str, Any]:
    """The full training state of a checkpoint folder (local path or URI), verified against its
    manifest: {model, optimizer, scheduler, scaler, epoch, history, extra}."""
    raw = verified_files(directory, (STATE_FILE, META_FILE))
    try:
        state = torch.load(io.BytesIO(raw[STATE_FILE]), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler's refusal, whatever its type, is reported with the file
        found = re.search(r"Unsupported (?:global|operand)[^.]*", str(e))  # torch's advice to unpickle is not repeated
        raise CheckpointError(f"checkpoint {directory}: {STATE_FILE} holds something other than tensors and "
                              f"plain values, refused without running it ({found.group(0) if found else type(e).__name__})"
                              f"; a state.pt must hold only tensors: retrain or re-save it with this version") from None
    meta = json.loads(raw[META_FILE])
    state["extra"] = {**state.get("extra", {}), **meta.get("extra", {})}
    state["epoch"], state["history"] = meta["epoch"], meta["history"]
    return state


def load_config_and_preprocess(directory: str | Path) -> tuple[ExperimentConfig, PreprocessState]:
    """The resolved config and preprocessing state of a checkpoint folder (local path or URI)."""
    raw = verified_files(directory, (CONFIG_FILE, PREPROCESS_FILE))
    cfg = ExperimentConfig.model_validate(yaml.safe_load(raw[CONFIG_FILE].decode()))
    return cfg, PreprocessState.from_dict(json.loads(raw[PREPROCESS_FILE].decode()))


def shape_mismatches(model: torch.nn.Module, shapes: dict[str, list[int]]) -> list[str]:
    """Differences between a model's parameters/buffers and a checkpoint's tensor shapes, one line each."""
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    out = [f"{k}: checkpoint {shapes[k]}, model {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    out += [f"{k}: in the model, not in the checkpoint" for k in own if k not in shapes]
    out += [f"{k}: in the checkpoint, not in the model" for k in shapes if k not in own]
    return out


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """`model.load_state_dict`, with a mismatch reported by key instead of torch's raw `size mismatch`."""
    diff = shape_mismatches(model, {k: list(v.shape) for k, v in weights.items()})
    if diff:
        raise CheckpointError(f"checkpoint {where} does not fit this model ({len(diff)} tensor(s) differ: "
                              f"{'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); it was written by "
                              f"another config (model/dataset)")
    model.load_state_dict(weights)


def check_resumable(run_dir: str, cfg: ExperimentConfig, model: torch.nn.Module) -> str | None:
    """Before a relaunch resumes `run_dir` (before Ray starts): its latest checkpoint that passes
    its manifest must come from this experiment's tasks and model shapes; raises CheckpointError
    naming what differs. Returns that checkpoint's folder, or None for a fresh run. Folders
    without a valid manifest (a write killed midway) are skipped: Ray resumes from the last
    checkpoint it registered, which was complete."""
    if not storage.is_dir(run_dir):
        return None
    names = sorted({storage.parent(f).rstrip("/").rsplit("/", 1)[-1] for f in storage.list_files(run_dir, MANIFEST_FILE)})
    for name in reversed([n for n in names if n.startswith("epoch_")]):
        folder = storage.join(run_dir, name)
        try:
            meta = load_meta(folder)
        except CheckpointError:
            continue
        problems = []
        if meta["tasks"] != cfg.task_names():
            problems.append(f"tasks {meta['tasks']} vs this config's {cfg.task_names()}")
        problems += shape_mismatches(model, meta["shapes"])
        if problems:
            same = meta["config_sha256"] == config_hash(cfg)
            raise CheckpointError(
                f"run.name={run_dir.rstrip('/').rsplit('/', 1)[-1]} already has checkpoint {folder} from another "
                f"config (config sha256 {meta['config_sha256'][:12]}{' (same)' if same else ''} vs "
                f"{config_hash(cfg)[:12]}): {'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}. "
                f"Pick a new run.name, or delete {run_dir} to start over")
        return folder
    return None
