"""Shared fixtures. Unit tests never start Ray; integration tests share ONE local Ray session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_data.py

from tiny_data import write_tiny_dataset  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (badly so on a loaded 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), rows=600)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic financial dataset (all 16 tasks, every feature group, oracle columns)."""
    from ple_adatt.data.synthetic import generate, load_generator_config

    cfg = load_generator_config(ROOT / "configs/datasets/synthetic_financial.yaml",
                                ["gmm_fit_rows=500", "calibration_rows=2048"])
    return generate(cfg, 1500, tmp_path_factory.mktemp("synthetic") / "data")


@pytest.fixture(scope="session")
def census_dataset(tmp_path_factory) -> Path:
    """Census-Income prepared from the small shipped fixture files (tests/fixtures/census)."""
    from ple_adatt.data.census import prepare_census

    fix = ROOT / "tests/fixtures/census"
    return prepare_census(fix / "census-income.train.gz", fix / "census-income.val.gz",
                          out_dir=tmp_path_factory.mktemp("census") / "census")


def ray_test_env() -> None:
    """Environment of every Ray the tests start (Train workers inherit it from their node)."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    # Ray's own Train tests poll the worker group faster than the default; each run ends sooner.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


# RAY_DATA_LOG_LEVEL: what train/reporting.quiet_logs gives the Ray that a job starts itself, so the
# job-run test sees the console a user sees (no "Dataset ... execution finished" from Ray Data actors).
RAY_RUNTIME_ENV = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning", "RAY_DATA_LOG_LEVEL": "ERROR"}}


def start_local_ray():
    """The shared local Ray: 4 logical CPUs so 2 train workers leave room for Ray Data and a Tune
    driver on the 2-core CI machine; capped object store."""
    import ray

    ray_test_env()
    ray.init(address="local", num_cpus=4, object_store_memory=300 * 1024**2, runtime_env=RAY_RUNTIME_ENV)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole integration tier (tests/integration/test_cluster.py runs its own
    multi-node cluster and restores this one if it was up)."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()
