"""Shared experts: shapes, zero fallback, and the maths each one rests on (Sinkhorn, NOTEARS, PersLay, FM)."""
import math
import typing

import pytest
import torch

from ple_adatt.model.experts import EXPERTS
from ple_adatt.model.experts.causal import CausalExpert, dag_acyclicity
from ple_adatt.model.experts.deepfm import DeepFMExpert
from ple_adatt.model.experts.hgcn import poincare_log0
from ple_adatt.model.experts.optimal_transport import OptimalTransportExpert, log_sinkhorn
from ple_adatt.model.experts.perslay import PersLayExpert
from ple_adatt.model.experts.temporal import TemporalExpert

B = 6
# Routed inputs per expert (float group shapes, categorical table sizes incl. the 0 slot).
ROUTES = {
    "mlp": ({"tabular": (12,)}, {"profile": [5, 8, 4]}),
    "deepfm": ({"tabular": (12,), "txn_seq": (30, 4)}, {"profile": [5, 8, 4]}),
    "temporal": ({"txn_seq": (30, 4), "tabular": (12,)}, {}),
    "hgcn": ({"hierarchy": (16,)}, {}),
    "perslay": ({"tda": (16,), "dgm": (20, 3)}, {}),
    "lightgcn": ({"collab": (32,)}, {}),
    "causal": ({"tabular": (12,)}, {"profile": [5, 8, 4]}),
    "optimal_transport": ({"tabular": (12,)}, {}),
}


def make_batch(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "feat/tabular": torch.randn(b, 12, generator=g),
        "cat/profile": torch.stack([torch.randint(0, c, (b,), generator=g) for c in (5, 8, 4)], 1),
        "feat/txn_seq": torch.randn(b, 30, 4, generator=g),
        "feat/hierarchy": 0.3 * torch.randn(b, 16, generator=g),
        "feat/tda": torch.randn(b, 16, generator=g),
        "feat/dgm": torch.rand(b, 20, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0]) + torch.tensor([0.0, 0.5, 1.0]),
        "feat/collab": torch.randn(b, 32, generator=g),
        "label/ctr": torch.rand(b, generator=g),
    }


def test_registry_matches_config_expert_names():
    from ple_adatt.config.dataset import ExpertName
    assert set(EXPERTS) == set(typing.get_args(ExpertName))
    assert set(ROUTES) == set(EXPERTS)  # every expert is covered by the tests below


@pytest.mark.parametrize("name", list(EXPERTS))
def test_output_shape_and_gradients(name):
    inputs, cats = ROUTES[name]
    torch.manual_seed(0)
    expert = EXPERTS[name](inputs, cats)
    assert expert.out_dim == (128 if name == "hgcn" else 64)
    out = expert(make_batch())
    assert out.shape == (B, expert.out_dim) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in expert.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", list(EXPERTS))
def test_zero_fallback_when_no_routed_group_present(name):
    inputs, cats = ROUTES[name]
    expert = EXPERTS[name](inputs, cats)
    out = expert({"label/ctr": torch.zeros(B)})
    assert out.shape == (B, expert.out_dim) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("name", list(EXPERTS))
def test_partial_batch_fills_missing_groups(name):
    inputs, cats = ROUTES[name]
    expert = EXPERTS[name](inputs, cats).eval()
    batch = make_batch()
    first = next(iter(inputs))
    keep = {k: v for k, v in batch.items() if k == f"feat/{first}"}
    out = expert(keep)
    assert out.shape == (B, expert.out_dim) and torch.isfinite(out).all()


def test_wrong_group_shape_is_a_clear_error():
    expert = EXPERTS["mlp"]({"tabular": (12,)})
    with pytest.raises(ValueError, match=r"feat/tabular: expected shape \[B, 12\]"):
        expert({"feat/tabular": torch.zeros(B, 11)})


def test_out_of_vocabulary_ids_fall_back_to_unknown():
    expert = EXPERTS["mlp"]({}, {"profile": [5]}).eval()
    a = expert({"cat/profile": torch.tensor([[0], [99]])})
    assert torch.allclose(a[0], a[1])


def test_deepfm_fm_term_equals_explicit_pairwise_sum():
    m = DeepFMExpert({"tabular": (4,)}, {"profile": [5, 3]}, emb_dim=3)
    e = m.fields({"feat/tabular": torch.randn(2, 4), "cat/profile": torch.tensor([[1, 2], [4, 0]])})   # [2, 6, 3]
    assert e.shape == (2, 6, 3)
    fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1))
    explicit = sum(e[:, i] * e[:, j] for i in range(6) for j in range(i + 1, 6))
    assert torch.allclose(fm, explicit, atol=1e-5)


def test_temporal_rejects_mismatched_lengths_and_categoricals():
    with pytest.raises(ValueError, match="must share T"):
        TemporalExpert({"a": (30, 4), "b": (20, 4)})
    with pytest.raises(ValueError, match="float groups only"):
        TemporalExpert({"a": (30, 4)}, {"profile": [5]})
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        TemporalExpert({"tabular": (12,)})


def test_temporal_branch_gate_is_a_distribution():
    m = TemporalExpert({"txn_seq": (30, 4)})
    m(make_batch())
    assert m.last_branch_weights.shape == (3,)
    assert float(m.last_branch_weights.sum()) == pytest.approx(1.0, abs=1e-5)


def test_poincare_log_map():
    x = torch.tensor([[0.3, 0.4], [0.0, 0.0], [3.0, 4.0]])
    v = poincare_log0(x)
    assert float(v[0].norm()) == pytest.approx(math.atanh(0.5), rel=1e-5)
    assert torch.allclose(v[0] / v[0].norm(), x[0] / 0.5)     # direction kept
    assert torch.count_nonzero(v[1]) == 0
    assert torch.isfinite(v).all()                            # outside the ball: pulled inside, finite


def test_sinkhorn_plan_marginals():
    torch.manual_seed(0)
    n, m = 8, 6
    a = torch.softmax(torch.randn(4, n), -1)
    b = torch.softmax(torch.randn(m), -1)
    cost = torch.rand(n, m)
    p = log_sinkhorn(a.log(), b.log(), cost, eps=0.1, n_iter=200).exp()   # [4, n, m]
    assert p.dtype == torch.float32
    assert (p.sum(-1) - a).abs().max() < 1e-4
    assert (p.sum(-2) - b).abs().max() < 1e-4


def test_sinkhorn_runs_in_fp32_under_bf16_inputs():
    a = torch.softmax(torch.randn(3, 5), -1).bfloat16()
    p = log_sinkhorn(a.log(), a.log(), torch.rand(5, 5).bfloat16(), n_iter=5)
    assert p.dtype == torch.float32


def test_ot_cost_is_a_squared_metric():
    c = OptimalTransportExpert({"x": (4,)}).cost()
    assert torch.count_nonzero(c.diagonal()) == 0
    assert torch.allclose(c, c.T) and (c >= 0).all() and (c + torch.eye(len(c)) > 0).all()


def test_dag_penalty_zero_for_dag_positive_for_cycle():
    dag = torch.triu(torch.randn(5, 5), diagonal=1)      # strictly upper triangular = acyclic
    assert abs(float(dag_acyclicity(dag))) < 1e-5
    cyc = dag.clone()
    cyc[4, 0] = 0.7                                       # closes 0 -> ... -> 4 -> 0 only if a path exists
    cyc[0, 4] = 0.7
    assert float(dag_acyclicity(cyc)) > 1e-3
    loop = torch.zeros(3, 3)
    loop[1, 1] = 0.5                                      # a self-loop is a cycle too
    assert float(dag_acyclicity(loop)) > 0


def test_causal_regularizer_terms():
    m = CausalExpert({"tabular": (12,)}, lambda_dag=1.0, lambda_sparse=1.0, lambda_rec=1.0)
    reg0 = m.regularizer()
    assert set(reg0) == {"dag", "sparse", "rec"} and float(reg0["rec"]) == 0.0
    m(make_batch())
    reg = m.regularizer()
    assert float(reg["rec"].detach()) > 0 and float(reg["dag"].detach()) > 0
    assert float(reg["sparse"].detach()) == pytest.approx(float((m.W.detach() ** 2).sum()), rel=1e-6)
    sum(reg.values()).backward()
    assert m.W.grad is not None and m.W.grad.abs().sum() > 0


def test_perslay_is_permutation_invariant_over_points():
    m = PersLayExpert({"dgm": (20, 3)}).eval()
    batch = make_batch()
    perm = torch.randperm(20)
    shuffled = {"feat/dgm": batch["feat/dgm"][:, perm]}
    assert torch.allclose(m({"feat/dgm": batch["feat/dgm"]}), m(shuffled), atol=1e-5)


def test_perslay_ignores_zero_persistence_padding():
    m = PersLayExpert({"dgm": (20, 3)}).eval()
    dgm = make_batch()["feat/dgm"]
    padded = torch.cat([dgm, torch.zeros(B, 5, 3)], dim=1)       # 5 padding points (birth == death == 0)
    m_pad = PersLayExpert({"dgm": (25, 3)}).eval()
    m_pad.load_state_dict(m.state_dict())
    assert torch.allclose(m({"feat/dgm": dgm}), m_pad({"feat/dgm": padded}), atol=1e-5)


@pytest.mark.parametrize("name", list(EXPERTS))
def test_head_is_a_proper_part_of_the_expert_on_its_output_path(name):
    from ple_adatt.model.experts._io import head_parameters

    inputs, cats = ROUTES[name]
    torch.manual_seed(0)
    expert = EXPERTS[name](inputs, cats)
    head = head_parameters(expert)
    ids = {id(p) for p in expert.parameters()}
    assert head and {id(p) for p in head} <= ids
    if name not in ("mlp", "lightgcn"):  # MLPs are all head; the others have a feature extractor first
        assert len({id(p) for p in head}) < len(ids)
    out = expert(make_batch())
    grads = torch.autograd.grad(out.square().mean(), head, allow_unused=True)
    assert all(g is not None for g in grads)  # every head parameter is on the output path
