"""The trainable-set mechanism (train/trainable.py) on one process; its 2-rank proof: test_ddp_harness.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ple_adatt.adatt import Phase
from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.train.build import build_adatt, build_model, build_weighting
from ple_adatt.train.trainable import TrainableSet, frozen_parameter_names, phase_optimizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hetero(tiny_dataset):
    cfg = load_config(ROOT / "configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.arch=ple_hetero",
                                                        "model.experts.use=[mlp]", "adatt.enabled=true",
                                                        "two_phase.enabled=true"])
    state = fit_preprocessing(cfg.dataset)
    torch.manual_seed(0)
    return cfg, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)


def test_frozen_set_is_a_function_of_the_phases(hetero):
    _, model = hetero
    assert frozen_parameter_names(model, 1, None) == frozen_parameter_names(model, 1, Phase.DYNAMIC) == frozenset()
    assert frozen_parameter_names(model, 1, Phase.FROZEN) == {"shared.attention.weight", "shared.attention.bias"}
    phase2 = frozen_parameter_names(model, 2, None)
    assert {"shared.attention.weight"} < phase2 and any(n.startswith("shared.experts.") for n in phase2)
    assert not any(n.startswith("towers.") for n in phase2)


def test_update_rewraps_only_when_the_set_changes_and_never_under_the_old_wrapper(hetero):
    cfg, model = hetero
    seen = []

    def wrap(m):
        seen.append({n for n, p in m.named_parameters() if not p.requires_grad})
        return torch.nn.Identity()  # a stand-in wrapper: a new object per call

    ts = TrainableSet(model, wrap)
    first = ts.update(1, Phase.WARMUP) and ts.model
    assert not ts.update(1, Phase.DYNAMIC) and ts.model is first  # same (empty) set: no re-wrap
    assert ts.update(1, Phase.FROZEN) and ts.model is not first
    assert bool(model.shared.attention.frozen)  # the gate's checkpointed flag follows
    assert ts.update(2, None) and not ts.update(2, None)
    assert seen == [set(), set(ts.frozen) & {"shared.attention.weight", "shared.attention.bias"}, set(ts.frozen)]


def test_phase_one_optimizer_ignores_the_gate_freeze_so_resume_rebuilds_the_same_groups(hetero):
    cfg, model = hetero
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    before, _ = phase_optimizer(cfg, model, weighting, adatt, 1, 4)
    TrainableSet(model, lambda m: m).update(1, Phase.FROZEN)
    after, _ = phase_optimizer(cfg, model, weighting, adatt, 1, 4)
    assert [[id(p) for p in g["params"]] for g in before.param_groups] == \
           [[id(p) for p in g["params"]] for g in after.param_groups]
    phase2, _ = phase_optimizer(cfg, model, weighting, adatt, 2, 4)
    in_phase2 = {id(p) for g in phase2.param_groups for p in g["params"]}
    assert id(model.shared.attention.weight) not in in_phase2 and id(adatt.W) not in in_phase2


# A fresh interpreter (~4 s): it runs with the multi-process tier.
@pytest.mark.integration
def test_training_modules_never_import_pyplot():
    code = ("import sys; import ple_adatt.train.step, ple_adatt.train.build, ple_adatt.train.trainable, "
            "ple_adatt.train.evaluate, ple_adatt.train.diagnostics, ple_adatt.model.assembly; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module load'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ROOT / "platform")})
