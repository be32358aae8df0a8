import typing

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.config.schema import MODEL_ARCHS
from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
from ple_adatt.train.build import MODEL_BUILDERS, build_model, build_scheduler, build_optimizer, set_schedule_position


def test_arch_registry_matches_schema():
    assert MODEL_BUILDERS.keys() == MODEL_ARCHS.keys()  # the dict build_model dispatches on
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


def test_schedule_follows_a_world_size_change_at_an_epoch_boundary(tiny_dataset):
    """2 workers (3 steps/epoch) checkpoint after 2 of 4 epochs; 1 worker (6 steps/epoch) resumes:
    from there the lr is exactly that of a run started on 1 worker."""
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "train.warmup_fraction=0.1"])

    def sched(steps_per_epoch):
        opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
        return opt, build_scheduler(cfg, opt, total_steps=4 * steps_per_epoch)

    opt2, s2 = sched(3)
    for _ in range(2 * 3):
        opt2.step()
        s2.step()
    ref_opt, ref = sched(6)
    for _ in range(2 * 6):
        ref_opt.step()
        ref.step()
    opt1, s1 = sched(6)
    opt1.load_state_dict(opt2.state_dict())
    s1.load_state_dict(s2.state_dict())
    assert s1.last_epoch == 6 and ref.last_epoch == 12  # as loaded, 2 epochs done would read as 1 of 4
    set_schedule_position(s1, 2 * 6)
    for _ in range(2 * 6):
        assert opt1.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        assert s1.get_last_lr() == ref.get_last_lr()
        for o, s in ((opt1, s1), (ref_opt, ref)):
            o.step()
            s.step()
