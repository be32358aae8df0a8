"""scaling.num_workers: a fixed count or an elastic [min, max] range, and what derives from it."""
from pathlib import Path

import pytest
from ray.train import ScalingConfig

from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.launch.fit import local_cpus_needed
from ple_adatt.launch.sweep import derive_max_concurrent

SMOKE = Path(__file__).resolve().parents[2] / "configs/smoke/tiny.yaml"


def test_fixed_and_elastic_worker_counts():
    fixed = load_config(SMOKE, ["scaling.num_workers=3"]).scaling
    assert (fixed.num_workers, fixed.min_workers, fixed.max_workers) == (3, 3, 3)
    elastic = load_config(SMOKE, ["scaling.num_workers=[1, 4]"]).scaling
    assert (elastic.num_workers, elastic.min_workers, elastic.max_workers) == ((1, 4), 1, 4)
    # Ray takes a tuple (a list is rejected) and turns elasticity on for it
    assert ScalingConfig(num_workers=elastic.num_workers).elasticity_enabled
    assert not ScalingConfig(num_workers=fixed.num_workers).elasticity_enabled


@pytest.mark.parametrize("value,message", [
    ("0", "must be >= 1, got 0"),
    ("[0, 2]", r"needs 1 <= min <= max, got \[0, 2\]"),
    ("[3, 2]", r"needs 1 <= min <= max, got \[3, 2\]"),
    ("[1, 2, 3]", r"an int or a \[min, max\] pair of ints, got \[1, 2, 3\]"),
    ("[1.5, 2]", r"an int or a \[min, max\] pair of ints"),
    ("true", r"an int or a \[min, max\] pair of ints, got True"),
])
def test_bad_worker_counts_name_the_key(value, message):
    with pytest.raises(ConfigError, match=rf"scaling\.num_workers: .*{message}"):
        load_config(SMOKE, [f"scaling.num_workers={value}"])


def test_elastic_runs_are_sized_for_their_max():
    cfg = load_config(SMOKE, ["scaling.num_workers=[1, 2]", "scaling.cpus_per_worker=1", "train.batch_size=64"])
    assert cfg.global_batch_size() == 128
    assert local_cpus_needed(cfg) == 4
    # a trial grows to 2 workers: 1 + 2 CPUs each, as for a fixed 2-worker trial
    assert derive_max_concurrent({"CPU": 16.0}, cfg, 100, None) == 4
