"""Exact parameter counts of every shipped experiment config: a refactor that changes a model's
shape (a layer dropped, a width derived differently) fails here, not in a study weeks later.

Counts are on the test stand-in datasets (conftest fixtures); vocabularies and cluster counts come
from those files, so a change to the generator or the fixtures also shows up here.
"""
from __future__ import annotations

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.train.build import build_model

PINNED = {  # config -> (stand-in dataset fixture, arch, exact parameter count)
    "configs/smoke/tiny.yaml": ("tiny_dataset", "ple", 9_275),
    "configs/experiments/synthetic_ple.yaml": ("synthetic_dataset", "ple_hetero", 1_846_512),
    "configs/experiments/synthetic_ple_adatt.yaml": ("synthetic_dataset", "ple_hetero", 1_846_512),
    "configs/experiments/synthetic_ple_mlp.yaml": ("synthetic_dataset", "ple", 854_685),
    "configs/experiments/census_ple.yaml": ("census_dataset", "ple_hetero", 193_190),
}


@pytest.mark.parametrize("rel", sorted(PINNED))
def test_exact_parameter_count(rel, request):
    fixture, arch, expected = PINNED[rel]
    cfg = load_config(rel, [f"dataset={request.getfixturevalue(fixture)}"])
    state = fit_preprocessing(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)  # priors set
    assert cfg.model.arch == arch
    assert sum(p.numel() for p in model.parameters()) == expected


def test_every_shipped_experiment_is_pinned():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shipped = {p.relative_to(root).as_posix() for p in (root / "configs/experiments").glob("*.yaml")}
    assert shipped | {"configs/smoke/tiny.yaml"} == set(PINNED)


ARCH_PINNED = {  # (config, model.arch override) -> (stand-in dataset fixture, exact count): Meta's AdaTT-sp
    # next to PLE's count above on the same data, expert widths and expert numbers (docs/results.md)
    ("configs/smoke/tiny.yaml", "adatt_fusion"): ("tiny_dataset", 9_455),
    ("configs/experiments/synthetic_ple_mlp.yaml", "adatt_fusion"): ("synthetic_dataset", 905_325),
}


@pytest.mark.parametrize("rel, arch", sorted(ARCH_PINNED))
def test_exact_parameter_count_of_other_archs(rel, arch, request):
    fixture, expected = ARCH_PINNED[(rel, arch)]
    cfg = load_config(rel, [f"dataset={request.getfixturevalue(fixture)}", f"model.arch={arch}"])
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    assert sum(p.numel() for p in model.parameters()) == expected
