"""`ple-adatt validate` catches what would otherwise fail later: a model the workers cannot build,
and a test split that does not match the spec (issue 17)."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from ple_adatt.cli import main

SMOKE = "configs/smoke/tiny.yaml"


def test_a_model_that_cannot_be_built_fails_validation(tiny_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", SMOKE, f"dataset={tiny_dataset}", "model.arch=ple_hetero", "--no-data"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "model.arch=ple_hetero cannot be built for dataset 'tiny'" in err and "no expert receives input" in err
    main(["validate", SMOKE, f"dataset={tiny_dataset}", "model.arch=ple_hetero", "model.experts.use=[mlp]", "--no-data"])
    assert "ok: " in capsys.readouterr().out


def test_validate_checks_the_test_split(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "tiny"
    shutil.copytree(tiny_dataset.parent, root)
    for f in (root / "test").glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["y_value"]), f)
    main(["validate", SMOKE, f"dataset={root / 'dataset.yaml'}", "--no-data"])  # config-only: fine
    with pytest.raises(SystemExit):
        main(["validate", SMOKE, f"dataset={root / 'dataset.yaml'}"])
    err = capsys.readouterr().err
    assert "y_value" in err and "test" in err, err
    assert yaml.safe_load((root / "dataset.yaml").read_text())["splits"]["test"] == "test/"
