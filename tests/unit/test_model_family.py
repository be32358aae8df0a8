"""Meta's AdaTT-sp (model.arch=adatt_fusion) and adaTT's explicit epoch boundaries (no Ray)."""
from __future__ import annotations

import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.model.adatt_fusion import AdaTTSp, FusionLevel
from ple_adatt.model.baselines import PLE
from ple_adatt.train.build import build_adatt

TASKS = ["a", "b", "c"]


def _zero_gate(level: FusionLevel, task: str, expert: int) -> None:
    """Make ``task``'s gate pick ``expert`` (one-hot after the softmax)."""
    with torch.no_grad():
        level.gates[task].weight.zero_()
        level.gates[task].bias.fill_(-1e4)
        level.gates[task].bias[expert] = 0.0


def test_every_task_gate_reads_every_expert_plus_its_own_residual():
    torch.manual_seed(0)
    m = AdaTTSp(6, [8], TASKS, n_task=1, n_shared=2, num_levels=1, dropout=0.0).eval()
    level = m.levels[0]
    assert level.gates["a"].out_features == 3 * 1 + 2 and level.shared_gate is None  # last level: no shared unit
    x = torch.randn(5, 6)
    own = {t: level.task_experts[t][0](x) for t in TASKS}
    _zero_gate(level, "a", 1)  # task a's gate puts all weight on task b's expert
    out = m(x)
    torch.testing.assert_close(out["a"], own["b"] + own["a"])  # fusion + native residual (one expert: weight 1)


def test_a_task_reads_another_tasks_experts_unlike_ple():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    fusion = AdaTTSp(6, [8], TASKS, n_task=1, n_shared=1, num_levels=1, dropout=0.0).eval()
    ple = PLE(6, [8], TASKS, n_shared=1, n_task=1, num_levels=1, dropout=0.0).eval()
    for model, experts in ((fusion, fusion.levels[0].task_experts), (ple, ple.levels[0].task_experts)):
        before = model(x)["a"].clone()
        with torch.no_grad():
            for p in experts["b"].parameters():
                p.add_(1.0)
        changed = not torch.allclose(model(x)["a"], before)
        assert changed is (model is fusion)


def test_native_weights_and_stacked_levels():
    torch.manual_seed(0)
    m = AdaTTSp(6, [8, 4], TASKS, n_task=2, n_shared=2, num_levels=2, dropout=0.0)
    first, last = m.levels
    assert first.shared_gate is not None and last.shared_gate is None
    assert set(first.native) == set(TASKS) and first.native["a"].shape == (2,)
    assert first.shared_native.shape == (2,) and last.shared_native is None
    assert m.shared_modules() == list(last.shared)
    out = m(torch.randn(3, 6))
    assert {t: v.shape for t, v in out.items()} == dict.fromkeys(TASKS, (3, 4))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in m.parameters())  # every expert, gate and native weight is used
    assert m.gate_weights()["a"].shape == (2 * 3 + 2,)


def test_no_shared_experts_is_adatt_sp_without_the_shared_group():
    m = AdaTTSp(6, [8], TASKS, n_task=1, n_shared=0, num_levels=2, dropout=0.0)
    assert all(lv.shared_gate is None for lv in m.levels) and m.shared_modules() == []
    assert m(torch.randn(2, 6))["c"].shape == (2, 8)


def test_config_section_is_its_own(tiny_dataset):
    cfg = load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.arch=adatt_fusion"])
    assert (cfg.model.num_task_experts, cfg.model.num_shared_experts, cfg.model.num_levels) == (1, 2, 1)
    with pytest.raises(ValueError, match="num_experts"):  # an MMoE field is not an adatt_fusion field
        load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.arch=adatt_fusion",
                                                "model.num_experts=3"])


# ---- adaTT epochs -----------------------------------------------------------------------------

def _adatt_cfg(tiny_dataset, *overrides):
    return load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "adatt.enabled=true",
                                                   "train.epochs=6", *overrides])


def test_explicit_epochs_drive_the_schedule(tiny_dataset):
    cfg = _adatt_cfg(tiny_dataset, "adatt.warmup_epochs=1", "adatt.freeze_epoch=4")
    adatt = build_adatt(cfg)
    phases = [adatt.on_epoch_start(e, cfg.train.epochs).name for e in range(6)]
    assert phases == ["WARMUP", "DYNAMIC", "DYNAMIC", "DYNAMIC", "FROZEN", "FROZEN"]
    default = build_adatt(_adatt_cfg(tiny_dataset))  # fractions 0.3 / 0.8 of 6 -> 2 / 5
    assert [default.on_epoch_start(e, 6).name for e in range(6)].count("WARMUP") == 2


@pytest.mark.parametrize("overrides, message", [
    (["adatt.warmup_epochs=1", "adatt.freeze_epoch=4", "adatt.freeze_fraction=0.7"],
     "adatt.warmup_epochs and adatt.freeze_fraction are both set"),
    (["adatt.warmup_epochs=1"], "adatt.warmup_epochs needs adatt.freeze_epoch"),
    (["adatt.warmup_epochs=3", "adatt.freeze_epoch=3"], "freeze_epoch .3. must be > adatt.warmup_epochs"),
    (["adatt.warmup_epochs=1", "adatt.freeze_epoch=6"], "adatt.freeze_epoch: 6 must be < train.epochs"),
])
def test_epoch_keys_clear_errors(tiny_dataset, overrides, message):
    with pytest.raises(ValueError, match=message):
        _adatt_cfg(tiny_dataset, *overrides)
