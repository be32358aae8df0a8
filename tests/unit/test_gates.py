"""CGC gates: normalisation values, prior init, row sums, entropy term, freeze persistence, stacking."""
import io
import math

import pytest
import torch

from ple_adatt.model.gates import CGCAttention, CGCLayer, dimension_scales, entropy_ratio
from ple_adatt.train.diagnostics import plot_gate_heatmap

EXPERTS7 = ["deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"]
DIMS7 = [64, 64, 128, 64, 64, 64, 64]
TASKS = ["ctr", "churn", "ltv"]


def test_dimension_normalisation_values():
    mean_dim = (128 + 6 * 64) / 7
    assert mean_dim == pytest.approx(73.142857, abs=1e-6)
    s = dimension_scales(DIMS7)
    assert float(s[2]) == pytest.approx(math.sqrt(mean_dim / 128), abs=1e-6) == pytest.approx(0.756, abs=5e-4)
    assert float(s[0]) == pytest.approx(math.sqrt(mean_dim / 64), abs=1e-6) == pytest.approx(1.069, abs=5e-4)
    s8 = dimension_scales([128] + [64] * 7)                     # the 8-expert G1 layout in the spec
    assert (round(float(s8[0]), 3), round(float(s8[1]), 3)) == (0.75, 1.061)
    assert torch.allclose(dimension_scales([64, 64]), torch.ones(2))


@pytest.mark.parametrize("gate_type", ["softmax", "sigmoid"])
def test_attention_rows_sum_to_one_and_blocks_are_scaled(gate_type):
    torch.manual_seed(0)
    gate = CGCAttention(DIMS7, TASKS, EXPERTS7, gate_type=gate_type)
    torch.nn.init.normal_(gate.weight, std=0.05)               # input-dependent gate, not the uniform init
    h = torch.randn(5, sum(DIMS7))
    out = gate(h)
    assert set(out) == set(TASKS) and all(v.shape == (5, 512) for v in out.values())
    w = gate.last_weights                                       # [B, T, E]
    assert w.shape == (5, 3, 7)
    assert torch.allclose(w.sum(-1), torch.ones(5, 3), atol=1e-6)
    s = dimension_scales(DIMS7)
    start = sum(DIMS7[:2])                                      # block 2 = hgcn, 128 wide
    expected = w[:, 1, 2:3] * s[2] * h[:, start:start + 128]
    assert torch.allclose(out["churn"][:, start:start + 128], expected, atol=1e-6)


def test_domain_prior_bias_pattern():
    prior = {"ctr": ["perslay", "temporal", "hgcn"], "ltv": ["temporal", "deepfm"], "not_trained": ["hgcn"]}
    gate = CGCAttention(DIMS7, TASKS, EXPERTS7, domain_prior=prior, bias_high=1.0, bias_low=-1.0)
    expected = torch.tensor([
        [-1, 1, 1, 1, -1, -1, -1],     # ctr
        [0, 0, 0, 0, 0, 0, 0],         # churn: no prior -> uniform
        [1, 1, -1, -1, -1, -1, -1],    # ltv
    ], dtype=torch.float32)
    assert torch.equal(gate.bias.data, expected)
    assert torch.count_nonzero(gate.weight) == 0
    gate(torch.randn(4, 512))
    w = gate.last_weights.detach()
    assert torch.allclose(w[0], w[1])                           # input-independent at init
    e, em1 = math.e, math.exp(-1)
    assert float(w[0, 0, 1]) == pytest.approx(e / (3 * e + 4 * em1), rel=1e-5)


def test_entropy_loss_formula_gradient_and_switches():
    torch.manual_seed(0)
    gate = CGCAttention(DIMS7, TASKS, EXPERTS7, entropy_weight=0.01)
    torch.nn.init.normal_(gate.weight, std=0.05)
    gate(torch.randn(8, 512))
    w = gate.last_weights.detach()
    expected = 0.01 * -(-(w * w.log()).sum(-1)).mean()
    loss = gate.entropy_loss()
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert gate.weight.grad.abs().sum() > 0
    gate.eval()
    assert float(gate.entropy_loss()) == 0.0
    gate.train()
    gate.freeze()
    assert float(gate.entropy_loss()) == 0.0


def test_entropy_ratio_bounds():
    uniform = torch.full((4, 2, 5), 0.2)
    onehot = torch.zeros(4, 2, 5)
    onehot[..., 0] = 1
    assert torch.allclose(entropy_ratio(uniform), torch.ones(2))
    assert torch.allclose(entropy_ratio(onehot), torch.zeros(2), atol=1e-4)


def test_freeze_state_survives_state_dict_round_trip():
    gate = CGCAttention(DIMS7, TASKS, EXPERTS7)
    gate.freeze()
    assert not gate.weight.requires_grad and bool(gate.frozen)
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    fresh = CGCAttention(DIMS7, TASKS, EXPERTS7)
    assert not bool(fresh.frozen) and fresh.weight.requires_grad
    fresh.load_state_dict(torch.load(buf))
    assert bool(fresh.frozen) and not fresh.weight.requires_grad and not fresh.bias.requires_grad
    fresh.unfreeze()
    assert fresh.weight.requires_grad


def test_invalid_gate_type_is_named():
    with pytest.raises(ValueError, match=r"gate_type: 'tanh' is not one of \['softmax', 'sigmoid'\]"):
        CGCAttention(DIMS7, TASKS, EXPERTS7, gate_type="tanh")


@pytest.mark.parametrize("gate_type", ["softmax", "sigmoid"])
def test_cgc_layer_stacking(gate_type):
    torch.manual_seed(0)
    ext_dims = [64, 128]
    levels = [CGCLayer(192, TASKS, 32, n_shared=0, n_task=1, shared_gate=True, external_dims=ext_dims,
                       external_names=["deepfm", "hgcn"], gate_type=gate_type),
              CGCLayer(32, TASKS, 32, n_shared=2, n_task=1, shared_gate=True, gate_type=gate_type),
              CGCLayer(32, TASKS, 32, n_shared=2, n_task=2, shared_gate=False, gate_type=gate_type)]
    ext = [torch.randn(4, 64, requires_grad=True), torch.randn(4, 128, requires_grad=True)]
    h = torch.cat(ext, 1)
    task_in, shared = {t: h for t in TASKS}, h
    for i, layer in enumerate(levels):
        task_in, shared = layer(task_in, shared, ext if i == 0 else ())
        w = layer.last_weights
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-6)
        assert w.shape[-1] == len(layer.expert_labels)
    assert shared is None and all(v.shape == (4, 32) for v in task_in.values())
    assert levels[0].expert_labels == ["deepfm", "hgcn", "task0"]
    sum(v.sum() for v in task_in.values()).backward()
    assert ext[1].grad.abs().sum() > 0                          # level 0 mixes the external experts
    assert all(p.grad is not None for layer in levels for p in layer.gates.parameters())


def test_cgc_layer_checks_external_count():
    layer = CGCLayer(8, TASKS, 8, external_dims=[8])
    with pytest.raises(ValueError, match="1 external experts, got 0"):
        layer({t: torch.zeros(2, 8) for t in TASKS}, torch.zeros(2, 8))


def test_heatmap_png(tmp_path):
    path = plot_gate_heatmap(torch.softmax(torch.randn(3, 7), -1), TASKS, EXPERTS7, tmp_path / "gates.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="do not match"):
        plot_gate_heatmap(torch.zeros(2, 7), TASKS, EXPERTS7, tmp_path / "bad.png")
