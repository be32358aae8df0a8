"""train.cache_train / cache_val = auto: cache a split when its estimated packed size fits in a share of
the object store; explicit true/false always win (launch/caching.py)."""
from __future__ import annotations

import pytest

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import check_dataset
from ple_adatt.data.preprocess import fit_preprocessing
from ple_adatt.launch.caching import CACHE_FRACTION, cache_plan, packed_bytes_per_row


@pytest.fixture(scope="module")
def setup(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.cache_train=auto",
                                                  "train.cache_val=auto"])
    return cfg, fit_preprocessing(cfg.dataset), check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())


def test_auto_caches_what_fits_and_streams_what_does_not(setup):
    cfg, state, rows = setup
    train_bytes = packed_bytes_per_row(cfg, state, "train") * rows["train"]
    val_bytes = packed_bytes_per_row(cfg, state, "val") * rows["val"]
    assert 0 < train_bytes and 0 < val_bytes
    roomy = cache_plan(cfg, state, rows, 10 * (train_bytes + val_bytes) / CACHE_FRACTION)
    assert roomy["train"][0] and roomy["val"][0] and "auto:" in roomy["train"][1]
    # room for the validation split only (it is decided first: every rank reads it every epoch)
    tight = cache_plan(cfg, state, rows, 1.01 * val_bytes / CACHE_FRACTION)
    assert tight["val"][0] and not tight["train"][0]
    assert not any(c for c, _ in cache_plan(cfg, state, rows, 0.5 * val_bytes / CACHE_FRACTION).values())


def test_explicit_settings_win(setup):
    cfg, state, rows = setup
    c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"cache_train": True, "cache_val": False})})
    plan = cache_plan(c, state, rows, 0.0)
    assert plan == {"val": (False, "train.cache_val=false"), "train": (True, "train.cache_train=true")}
