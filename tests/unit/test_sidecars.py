"""SAE and evidential sidecars (model.sae / model.evidential): built from config, trained in the step,
reported by evaluate (calibration, SAE sparsity) and predict (u_<task> columns). No Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddp_harness import load_setup, train_rank
from ple_adatt.config.loading import load_config
from ple_adatt.data.preprocess import input_shapes
from ple_adatt.launch.inference import evaluate_checkpoint, load_model, prediction_columns
from ple_adatt.model.sidecars import sidecars_of
from ple_adatt.train.build import build_model, build_weighting
from ple_adatt.train.calibration import classification_ece, expected_calibration_error, nig_interval
from ple_adatt.train.step import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
BOTH = ["model.sae.enabled=true", "model.evidential.enabled=true"]


def _setup(tiny_dataset, *overrides, rows=64):
    cfg, state, data = load_setup(tiny_dataset, list(overrides), rows)
    torch.manual_seed(0)
    return cfg, state, data, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)


def test_off_by_default_no_parameters(tiny_dataset):
    cfg, _, _, model = _setup(tiny_dataset)
    assert not cfg.model.sae.enabled and not cfg.model.evidential.enabled
    assert sidecars_of(model) is None and not any(n.startswith("sidecars.") for n, _ in model.named_parameters())


@pytest.mark.parametrize("arch", ["ple", "mmoe", "shared_bottom", "adatt_fusion"])
def test_one_head_per_task_type_and_sae_on_the_shared_width(tiny_dataset, arch):
    cfg, _, data, model = _setup(tiny_dataset, f"model.arch={arch}", *BOTH)
    side = sidecars_of(model)
    assert {t: type(h).__name__ for t, h in side.heads.items()} == \
        {"click": "DirichletHead", "stage": "DirichletHead", "value": "NIGHead"}
    assert side.heads["click"].linear.out_features == 2 and side.heads["stage"].linear.out_features == 3
    model(data)
    shared = model.shared_outputs()
    assert side.sae.weight.shape == (4 * shared.shape[1], shared.shape[1])  # expansion 4 x the shared width


def test_ple_hetero_heads_read_the_tower_inputs_and_sae_the_shared_experts(tiny_dataset):
    cfg, _, data, model = _setup(tiny_dataset, "model.arch=ple_hetero", "model.experts.use=[mlp]", *BOTH)
    side = sidecars_of(model)
    h = model.task_inputs(data)
    assert side.heads["value"].linear.in_features == h["value"].shape[1]
    assert side.sae.weight.shape[1] == model.shared.shared_dim
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(cfg, model, model, build_weighting(cfg), None, opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    out = trainer.step(data, 0)
    assert out.finite and {"evidential", "sae", "cgc_entropy"} <= set(out.terms)


def test_task_types_select_heads_and_single_task_has_no_sae(tiny_dataset):
    cfg, _, _, model = _setup(tiny_dataset, "model.evidential.enabled=true", "model.evidential.task_types=[regression]")
    assert list(sidecars_of(model).heads) == ["value"] and sidecars_of(model).sae is None
    with pytest.raises(ValueError, match="model.sae.enabled.*single_task"):
        load_config("configs/smoke/tiny.yaml", [f"dataset={tiny_dataset}", "model.arch=single_task",
                                                "model.sae.enabled=true"])


def test_step_trains_heads_and_sae_without_the_sae_shaping_the_model(tiny_dataset):
    cfg, _, data, model = _setup(tiny_dataset, *BOTH)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(cfg, model, model, build_weighting(cfg), None, opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    out = trainer.step(data, 0)
    assert out.finite and {"evidential", "sae"} <= set(out.terms)
    assert float(out.terms["sae"]) == pytest.approx(0.01 * float(sidecars_of(model).sae_loss.detach()))  # loss_weight
    for name in ("sidecars.heads.click", "sidecars.heads.stage", "sidecars.heads.value", "sidecars.sae"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    model(data)  # the SAE input is detached: its loss has no path into the shared experts
    grads = torch.autograd.grad(sidecars_of(model).sae_loss, model.shared_parameters(), allow_unused=True)
    assert all(g is None for g in grads)


def test_evaluate_reports_calibration_and_sae_predict_writes_u_columns(tiny_dataset, tmp_path):
    cfg, state, data = load_setup(tiny_dataset, [*BOTH, "train.epochs=2"], 256)
    train_rank(0, 1, cfg, state, data, 64, 4, checkpoints=str(tmp_path))
    ckpt = tmp_path / "epoch_0001"
    m = evaluate_checkpoint(ckpt, "val")["metrics"]
    for key in ("click/ece", "click/evi_ece", "stage/ece", "stage/evi_ece", "value/coverage",
                "value/interval_width", "click/u_mean", "value/u_mean"):
        assert np.isfinite(m[key]), key
    assert 0 <= m["click/ece"] <= 1 and 0 <= m["value/coverage"] <= 1 and m["value/interval_width"] > 0
    assert 0 < m["sae/l0_fraction"] < 1 and 0 <= m["sae/dead_fraction"] <= 1 and m["sae/latents"] > 0
    cfg, _, model = load_model(ckpt)
    with torch.no_grad():
        cols = prediction_columns(cfg, model(data), model=model)
    for t in ("click", "stage", "value"):
        assert cols[f"u_{t}"].shape == (256,) and np.all(cols[f"u_{t}"] > 0), t
    assert np.all(cols["u_stage"] <= 1.0)  # u = C / S with S >= C


def test_ece_known_values():
    assert expected_calibration_error(np.full(100, 0.9), np.r_[np.ones(90), np.zeros(10)]) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(100, 0.9), np.r_[np.ones(50), np.zeros(50)]) == pytest.approx(0.4)
    # binary: a constant P(y=1) = 0.2 predicts class 0 with confidence 0.8; 30 % positives -> 0.7 correct
    y = np.r_[np.ones(30), np.zeros(70)]
    assert classification_ece(np.full(100, 0.2), y) == pytest.approx(0.1)


def test_nig_interval_covers_its_own_predictive_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    n, mu, v, a, b = 20000, 1.0, 2.0, 3.0, 1.5
    scale = np.sqrt(b * (1 + v) / (v * a))
    y = mu + scale * rng.standard_t(2 * a, size=n)
    lo, hi = nig_interval(*(np.full(n, x) for x in (mu, v, a, b)), 0.9)
    assert ((y >= lo) & (y <= hi)).mean() == pytest.approx(0.9, abs=0.01)
