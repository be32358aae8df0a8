"""Checkpoints cannot run code, and a truncated, altered, foreign, old-format or half-written one is
refused naming the file and what differs (train/checkpoint.py). No Ray."""
from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.launch.inference import evaluate_checkpoint, load_model
from ple_adatt.train.build import build_model, build_weighting
from ple_adatt.train.checkpoint import (
    MANIFEST_FILE, STATE_FILE, CheckpointError, check_resumable, load_state, save_checkpoint,
)
from ple_adatt.train.trainable import phase_optimizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/smoke/tiny.yaml"


def _write(folder: Path, overrides=(), epoch: int = 0) -> Path:
    cfg = load_config(TINY, list(overrides))
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    opt, sched = phase_optimizer(cfg, model, build_weighting(cfg), None, 1, 4)
    return save_checkpoint(folder, model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=epoch,
                           history=[{"epoch": epoch, "val/loss": 1.5}], cfg=cfg, preprocess=state,
                           extra={"weighting": {}, "phase": 1, "world_size": 1, "adatt": None})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("ck") / "epoch_0000")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this calls Path.touch(marker): what a hostile state.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_round_trip_keeps_the_training_state(ckpt):
    saved = load_state(ckpt)
    assert saved["epoch"] == 0 and saved["history"] == [{"epoch": 0, "val/loss": 1.5}]
    assert saved["extra"]["phase"] == 1 and saved["extra"]["world_size"] == 1
    assert all(isinstance(v, torch.Tensor) for v in saved["model"].values())
    cfg, _, model = load_model(ckpt)
    assert cfg.name == "smoke-tiny" and not model.training


def test_pickled_payload_never_runs(ckpt, tmp_path):
    """A state.pt carrying a pickled payload, with a manifest that matches it (a hostile author
    can write one): refused by the weights-only unpickler, and the marker file is never created."""
    bad = _copy(ckpt, tmp_path / "epoch_0001")
    marker = tmp_path / "payload_ran"
    buf = io.BytesIO()
    torch.save({"model": {}, "extra": {"weighting": _Payload(marker)}}, buf, pickle_module=pickle)
    (bad / STATE_FILE).write_bytes(buf.getvalue())
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    import hashlib
    manifest["files"][STATE_FILE] = {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "bytes": len(buf.getvalue())}
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="state.pt holds something other than tensors.*refused without running it"):
        load_state(bad)
    with pytest.raises(CheckpointError, match="refused without running it"):
        evaluate_checkpoint(bad, "val")
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickled naively, it runs
    assert marker.exists()


def test_truncated_file_is_named(ckpt, tmp_path):
    bad = _copy(ckpt, tmp_path / "epoch_0001")
    data = (bad / STATE_FILE).read_bytes()
    (bad / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"state.pt is truncated or altered \(\d+ bytes.*manifest says"):
        load_state(bad)


def test_old_format_and_interrupted_writes_are_explained(ckpt, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"model": {}, "epoch": 0}, old / STATE_FILE)
    with pytest.raises(CheckpointError, match="old format"):
        load_state(old)
    half = _copy(ckpt, tmp_path / "half")
    (half / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json: its write was interrupted"):
        load_state(half)


def test_foreign_checkpoint_names_keys_and_tasks(ckpt, tmp_path):
    """A relaunch under the same run name with another model is refused before Ray, naming the tensors."""
    run = tmp_path / "run"
    _copy(ckpt, run / "epoch_0000")
    cfg = load_config(TINY, ["model.expert_hidden=[24,16]"])
    state = fit_preprocessing(cfg.dataset)
    other = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    with pytest.raises(CheckpointError, match=r"from another config \(config sha256 .*\): .*checkpoint \[32, \d+\], model \[24"):
        check_resumable(str(run), cfg, other)
    from ple_adatt.train.checkpoint import load_model_weights
    with pytest.raises(CheckpointError, match=r"does not fit this model \(\d+ tensor\(s\) differ: .*weight"):
        load_model_weights(other, load_state(ckpt)["model"], str(ckpt))
    fewer = load_config(TINY, ["active_tasks=[click]"])
    with pytest.raises(CheckpointError, match=r"tasks \['click', 'stage', 'value'\] vs this config's \['click'\]"):
        check_resumable(str(run), fewer, build_model(fewer, input_shapes(fewer.dataset, state), state.cluster_k))


def test_kill_during_checkpoint_write_keeps_the_previous_one(ckpt, tmp_path):
    """A newer epoch folder without its manifest (the writer was killed) is skipped; the last
    complete checkpoint is the one a relaunch resumes from, and it loads."""
    run = tmp_path / "run"
    _copy(ckpt, run / "epoch_0000")
    partial = _copy(ckpt, run / "epoch_0001")
    (partial / MANIFEST_FILE).unlink()
    data = (partial / STATE_FILE).read_bytes()
    (partial / STATE_FILE).write_bytes(data[:100])
    cfg = load_config(TINY)
    state = fit_preprocessing(cfg.dataset)
    found = check_resumable(str(run), cfg, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k))
    assert Path(found).name == "epoch_0000" and load_state(found)["epoch"] == 0


def test_rewriting_a_folder_leaves_no_partial_files(tmp_path):
    d = _write(tmp_path / "epoch_0003", epoch=3)
    d = _write(d, epoch=4)  # the same folder again
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "manifest.json", "meta.json", "preprocess.json", "state.pt"]
    assert load_state(d)["epoch"] == 4
