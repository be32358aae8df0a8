import typing

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.config.schema import MODEL_ARCHS
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.train.build import ARCHS, build_model, build_scheduler, build_optimizer


def test_arch_registry_matches_schema():
    assert set(ARCHS) == set(MODEL_ARCHS)
    for arch, cls in MODEL_ARCHS.items():
        assert typing.get_args(cls.model_fields["arch"].annotation) == (arch,)


def _batch(cfg, state, b=7):
    batch = {}
    for k, v in input_shapes(cfg.dataset, state).items():
        if v["kind"] == "categorical":
            batch[k] = torch.stack([torch.randint(0, c, (b,)) for c in v["cardinalities"]], 1)
        else:
            batch[k] = torch.randn(b, *v["shape"])
    return batch


@pytest.mark.parametrize("arch,levels", [("shared_bottom", 1), ("single_task", 1), ("mmoe", 1), ("ple", 1), ("ple", 2)])
def test_every_arch_emits_logits_per_task(tiny_dataset, arch, levels):
    levels_override = [f"model.num_levels={levels}"] if arch == "ple" else []  # num_levels is a ple field
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", f"model.arch={arch}", *levels_override])
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state))
    out = model(_batch(cfg, state))
    assert out["click"].shape == (7,) and out["stage"].shape == (7, 3) and out["value"].shape == (7,)
    sum(o.float().sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ple_gates_are_distributions(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.num_levels=2"])
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state))
    model(_batch(cfg, state))
    for w in model.extractor.gate_weights().values():
        assert torch.isclose(w.sum(), torch.tensor(1.0))


def test_warmup_cosine_schedule(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.warmup_fraction=0.1", "train.lr=1.0"])
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg, opt, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
