import math
import typing

import pytest

import torch
import torch.nn.functional as F

from ple_adatt.config.schema import LOSSES_BY_TYPE, LossName
from ple_adatt.losses.task_losses import TASK_LOSSES, bce, ce, focal, huber, mse


def test_registry_matches_schema():
    assert set(TASK_LOSSES) == set(typing.get_args(LossName))
    assert {l for ls in LOSSES_BY_TYPE.values() for l in ls} <= set(TASK_LOSSES)


def test_focal_hand_value():
    # one positive with logit 0: p = 0.5, CE = ln 2, alpha 0.25, gamma 2 -> 0.25 * 0.25 * ln 2
    loss = focal(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([True]), focal_alpha=0.25, focal_gamma=2.0)
    assert math.isclose(loss.item(), 0.25 * 0.25 * math.log(2), rel_tol=1e-6)
    # a negative uses (1 - alpha)
    loss = focal(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([True]), focal_alpha=0.25, focal_gamma=2.0)
    assert math.isclose(loss.item(), 0.75 * 0.25 * math.log(2), rel_tol=1e-6)


def test_focal_gamma0_alpha_half_is_half_bce():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, generator=g), (torch.rand(64, generator=g) > 0.5).float()
    m = torch.ones(64, dtype=torch.bool)
    assert torch.allclose(focal(x, y, m, focal_alpha=0.5, focal_gamma=0.0), 0.5 * bce(x, y, m), atol=1e-6)


def test_masks_exclude_rows_and_empty_mask_gives_zero():
    x, y = torch.tensor([0.0, 100.0]), torch.tensor([1.0, 0.0])
    assert torch.allclose(bce(x, y, torch.tensor([True, False])), torch.tensor(math.log(2)))
    assert bce(x, y, torch.tensor([False, False])).item() == 0.0


def test_ce_huber_mse_match_torch():
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    m = torch.ones(8, dtype=torch.bool)
    assert torch.allclose(ce(logits, y, m), F.cross_entropy(logits, y))
    p, t = torch.randn(8), torch.randn(8) * 3
    assert torch.allclose(huber(p, t, m, huber_delta=0.5), F.huber_loss(p, t, delta=0.5))
    assert torch.allclose(mse(p, t, m), F.mse_loss(p, t))


def test_multiclass_focal_reduces_to_ce_scaled():
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    m = torch.ones(16, dtype=torch.bool)
    assert torch.allclose(focal(logits, y, m, focal_alpha=0.5, focal_gamma=0.0), 0.5 * ce(logits, y, m), atol=1e-6)


def test_bce_pos_weight_scales_only_the_positive_rows():
    logits, y, mask = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.0, 1.0]), torch.ones(3, dtype=torch.bool)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    expected = (plain * torch.tensor([4.0, 1.0, 4.0])).mean()
    assert torch.allclose(bce(logits, y, mask, pos_weight=4.0), expected)
    assert torch.allclose(bce(logits, y, mask), plain.mean())


def test_pos_weight_is_rejected_outside_binary_bce():
    from ple_adatt.config.loading import ConfigError, load_config

    with pytest.raises(ConfigError, match="tasks.value.pos_weight: only for binary tasks with loss bce"):
        load_config("configs/smoke/tiny.yaml", ["tasks.value.pos_weight=3"])
    with pytest.raises(ConfigError, match="tasks.click.pos_weight: only for binary tasks with loss bce"):
        load_config("configs/smoke/tiny.yaml", ["tasks.click.pos_weight=3", "tasks.click.loss=focal"])
    assert load_config("configs/smoke/tiny.yaml", ["tasks.click.pos_weight=3"]).task_settings("click").pos_weight == 3
