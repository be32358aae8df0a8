"""Every YAML under configs/ must validate against its schema (experiments with a real dataset spec)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ple_adatt.config.loading import load_config

ROOT = Path(__file__).resolve().parents[2]
ALL_YAML = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.y*ml"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, tiny_dataset, synthetic_dataset):
    """Small stand-ins for the datasets that experiment configs reference (those are generated)."""
    from ple_adatt.data.census import prepare_census

    root = tmp_path_factory.mktemp("cfg-data")
    fix = ROOT / "tests/fixtures/census"
    return {
        "synthetic": synthetic_dataset,
        "census": prepare_census(fix / "census-income.train.gz", fix / "census-income.val.gz", out_dir=root / "census"),
        "tiny": tiny_dataset,
    }


def _dataset_ref(path: Path) -> str | None:
    """The `dataset:` string of a config or of its base chain."""
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data.get("dataset"), str):
        return data["dataset"]
    if "base" in data:
        return _dataset_ref((path.parent / data["base"]).resolve())
    return None


def _stand_in(ref: str | None, datasets: dict) -> list[str]:
    if ref is None:
        return []
    for key, path in datasets.items():
        if key in ref:
            return [f"dataset={path}"]
    raise AssertionError(f"no stand-in dataset for reference {ref!r}; add one to the fixture")


def test_there_are_configs():
    assert any(p.startswith("configs/experiments/") for p in ALL_YAML) and "configs/smoke/tiny.yaml" in ALL_YAML


@pytest.mark.parametrize("rel", ALL_YAML)
def test_config_validates(rel, datasets):
    path = ROOT / rel
    text = path.read_text()
    assert text.startswith("#"), f"{rel}: every YAML starts with a comment (purpose, launch command, override)"
    kind = rel.split("/")[1]
    if kind == "datasets":
        from ple_adatt.data.synthetic import load_generator_config

        load_generator_config(path)
    elif kind in ("experiments", "smoke"):
        cfg = load_config(path, _stand_in(_dataset_ref(path), datasets))
        assert cfg.task_names()
    elif kind == "tune":
        from ple_adatt.launch.tune import load_campaign

        load_campaign(path, dataset_overrides=_stand_in(_dataset_ref_of_base(path), datasets))
    elif kind == "ablation":
        from ple_adatt.launch.ablate import load_study

        load_study(path, dataset_overrides=_stand_in(_dataset_ref_of_base(path), datasets))
    else:
        raise AssertionError(f"{rel}: unknown config folder '{kind}'; add it to this test")


def _dataset_ref_of_base(path: Path) -> str | None:
    data = yaml.safe_load(path.read_text()) or {}
    base = data.get("base") or data.get("experiment")
    return _dataset_ref((path.parent / base).resolve()) if isinstance(base, str) else None
