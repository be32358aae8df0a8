"""Feature router, HMM triple-mode projection and the assembled SharedExtractor."""
import pytest
import torch

from ple_adatt.model.routing import FeatureRouter, HMMProjector
from ple_adatt.model.shared_side import SharedExtractor, build_shared_extractor

GROUPS = {
    "tabular": {"kind": "numeric", "shape": [12], "experts": ["deepfm", "causal", "optimal_transport"]},
    "profile": {"kind": "categorical", "cardinalities": [5, 8, 4], "experts": ["deepfm"]},
    "txn_seq": {"kind": "list", "shape": [30, 4], "experts": ["temporal"]},
    "hierarchy": {"kind": "list", "shape": [16], "experts": ["hgcn"]},
    "tda": {"kind": "list", "shape": [16], "experts": ["perslay"]},
    "collab": {"kind": "list", "shape": [32], "experts": ["lightgcn"]},
}
SEVEN = ["deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "optimal_transport"]
TASKS = ["ctr", "churn", "ltv", "nba"]
MODES = ["journey", "lifecycle", "behavior"]


def make_batch(b=8):
    g = torch.Generator().manual_seed(1)
    batch = {
        "feat/tabular": torch.randn(b, 12, generator=g),
        "cat/profile": torch.stack([torch.randint(0, c, (b,), generator=g) for c in (5, 8, 4)], 1),
        "feat/txn_seq": torch.randn(b, 30, 4, generator=g),
        "feat/hierarchy": 0.3 * torch.randn(b, 16, generator=g),
        "feat/tda": torch.randn(b, 16, generator=g),
        "feat/collab": torch.randn(b, 32, generator=g),
        "cluster_probs": torch.softmax(torch.randn(b, 5, generator=g), -1),
    }
    for m in MODES:
        batch[f"hmm/{m}"] = torch.randn(b, 16, generator=g)
        batch[f"present/hmm/{m}"] = torch.arange(b) % 3 != 0      # every third row missing
    return batch


def test_router_routes_declared_groups_and_drops_unfed_experts():
    groups = dict(GROUPS, tabular=("numeric", (12,), ["deepfm", "causal"]))   # tuple form; OT loses its only group
    r = FeatureRouter(groups, SEVEN + ["mlp"])
    assert r.routes["deepfm"].inputs == {"tabular": (12,)}
    assert r.routes["deepfm"].cat_cardinalities == {"profile": [5, 8, 4]}
    assert r.routes["temporal"].inputs == {"txn_seq": (30, 4)}
    assert "optimal_transport" not in r.active and "mlp" not in r.active
    assert r.dropped["optimal_transport"] == "no feature group routes to it"
    assert r.active == ["deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal"]


def test_required_expert_without_input_names_expert_and_groups():
    with pytest.raises(ValueError, match=r"required expert\(s\) \['mlp'\] can never receive input") as err:
        FeatureRouter(GROUPS, SEVEN + ["mlp"], required=["mlp"])
    assert "txn_seq -> ['temporal']" in str(err.value)


def test_unknown_expert_names_are_all_reported():
    groups = dict(GROUPS, collab={"kind": "list", "shape": [32], "experts": ["lightgnc"]})
    with pytest.raises(ValueError) as err:
        FeatureRouter(groups, SEVEN + ["gbdt"])
    msg = str(err.value)
    assert "experts: unknown expert 'gbdt'" in msg and "group 'collab'.experts: unknown expert 'lightgnc'" in msg


def test_bad_group_declaration():
    with pytest.raises(ValueError, match="group 'x': kind 'text'"):
        FeatureRouter({"x": {"kind": "text", "shape": [3], "experts": ["mlp"]}}, ["mlp"])
    with pytest.raises(ValueError, match="group 'x': shape must be positive"):
        FeatureRouter({"x": {"kind": "list", "shape": [0], "experts": ["mlp"]}}, ["mlp"])


def test_expert_enabled_switch_leaves_expert_out():
    r = FeatureRouter(GROUPS, SEVEN, required=["hgcn"], expert_enabled={"hgcn": False})
    assert "hgcn" not in r.active and r.dropped["hgcn"] == "switched off by expert_enabled"
    assert r.unused_groups == ["hierarchy"]


def test_hmm_projector_defaults_for_missing_rows_and_modes():
    torch.manual_seed(0)
    hmm = HMMProjector(MODES, TASKS, {"ctr": "journey", "churn": "lifecycle"}, default_mode="behavior")
    with torch.no_grad():
        for p in hmm.default.values():
            p.fill_(0.5)
    batch = make_batch()
    batch["hmm/lifecycle"][0] = float("nan")                         # a missing row may hold garbage
    out = hmm(batch)
    assert set(out) == set(TASKS) and all(v.shape == (8, 32) for v in out.values())
    missing = ~batch["present/hmm/journey"]
    assert torch.allclose(out["ctr"][missing], torch.full((int(missing.sum()), 32), 0.5))
    assert not torch.allclose(out["ctr"][~missing], torch.full((int((~missing).sum()), 32), 0.5))
    assert torch.isfinite(out["churn"]).all()
    assert torch.equal(out["ltv"], out["nba"])                       # both unmapped -> behavior
    del batch["hmm/behavior"], batch["present/hmm/behavior"]
    assert torch.allclose(hmm(batch)["nba"], torch.full((8, 32), 0.5))


def test_hmm_projector_needs_a_mode_for_every_task():
    with pytest.raises(ValueError, match=r"tasks \['ltv', 'nba'\] have no HMM mode"):
        HMMProjector(MODES, TASKS, {"ctr": "journey", "churn": "lifecycle"})
    with pytest.raises(ValueError, match="unknown mode"):
        HMMProjector(MODES, TASKS, {"ctr": "daily"}, default_mode="behavior")


def full(gate="attention", **kw):
    torch.manual_seed(0)
    return build_shared_extractor(GROUPS, TASKS, SEVEN, gate=gate, hmm_modes=MODES, task_hmm_mode={"ctr": "journey"},
                                  hmm_default_mode="behavior",
                                  domain_prior={"ctr": ["temporal", "perslay"], "ltv": ["deepfm"]}, **kw)


@pytest.mark.parametrize("gate,width", [("attention", 512), ("layer", 64), ("both", 576)])
def test_shared_extractor_forward_and_gates_on_the_path(gate, width):
    m = full(gate, cgc_layers=2)
    assert m.expert_names == SEVEN and m.block_dims == [64, 64, 128, 64, 64, 64, 64] and m.shared_dim == 512
    assert m.task_out_dim == width
    batch = make_batch()
    out = m(batch)
    assert set(out) == set(TASKS) and all(v.shape == (8, width) for v in out.values())
    aux = m.aux_losses()
    assert set(aux) == ({"cgc_entropy", "causal_dag"} if gate != "layer" else {"causal_dag"})
    (sum(v.pow(2).mean() for v in out.values()) + sum(aux.values())).backward()
    if m.attention is not None:                                     # the gate is trained by the task loss
        assert m.attention.weight.grad.abs().sum() > 0
    for layer in m.layers:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.gates.parameters())
    weights, ratios, labels = m.gate_weights(), m.gate_entropy_ratios(), m.gate_labels()
    assert set(weights) == set(ratios) == set(labels)
    for k, w in weights.items():
        assert w.shape == (len(TASKS), len(labels[k])) and not w.requires_grad
        assert torch.allclose(w.sum(-1), torch.ones(len(TASKS)), atol=1e-5)
        assert ratios[k].shape == (len(TASKS),) and ((ratios[k] >= 0) & (ratios[k] <= 1 + 1e-6)).all()
    emb = m.hmm_embeddings(batch)
    assert m.hmm_dim == 32 and all(v.shape == (8, 32) for v in emb.values())


def test_leave_one_out_and_missing_groups():
    m = full(expert_enabled={"temporal": False})
    assert "temporal" not in m.expert_names and m.shared_dim == 448
    out = m({"feat/tabular": torch.randn(3, 12)})                   # most groups absent: zero blocks, finite output
    assert all(v.shape == (3, 448) and torch.isfinite(v).all() for v in out.values())
    hgcn = m.expert_names.index("hgcn")
    start = sum(m.block_dims[:hgcn])
    assert torch.count_nonzero(out["ctr"][:, start:start + 128]) == 0


def test_param_groups_per_expert_lr_wd():
    m = full(expert_enabled={"temporal": False})
    groups = m.param_groups({"hgcn": 1e-4, "temporal": 5e-4}, {"causal": 0.1}, base_lr=1e-3, base_wd=0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"base", "expert/hgcn", "expert/causal"}          # temporal is off: ignored
    assert (by_name["expert/hgcn"]["lr"], by_name["expert/hgcn"]["weight_decay"]) == (1e-4, 0.01)
    assert (by_name["expert/causal"]["lr"], by_name["expert/causal"]["weight_decay"]) == (1e-3, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    torch.optim.AdamW(groups)                                                  # accepted as is
    with pytest.raises(ValueError, match="unknown expert"):
        m.param_groups({"hgnc": 1e-4})


def test_frozen_gate_survives_extractor_checkpoint():
    m = full()
    m.freeze_gate()
    fresh = full()
    fresh.load_state_dict(m.state_dict())
    assert bool(fresh.attention.frozen) and not fresh.attention.weight.requires_grad
    fresh(make_batch())
    assert float(fresh.aux_losses()["cgc_entropy"].detach()) == 0.0


def test_builder_errors_are_named():
    with pytest.raises(ValueError, match="gate: 'moe' is not one of"):
        build_shared_extractor(GROUPS, TASKS, gate="moe")
    with pytest.raises(ValueError, match=r"expert 'temporal' \(groups \['tabular'\]\)"):
        build_shared_extractor({"tabular": GROUPS["tabular"] | {"experts": ["temporal"]}}, TASKS, ["temporal"])
    with pytest.raises(ValueError, match="needs a gate"):
        SharedExtractor({}, TASKS)


def test_extractor_deep_copies_and_pickles_after_a_forward():
    import copy
    import pickle
    m = full("both", cgc_layers=2)
    m(make_batch())
    clone = pickle.loads(pickle.dumps(copy.deepcopy(m)))
    for a, b in zip(m.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(a, b)
    assert clone.aux_losses()["cgc_entropy"] == 0              # no cached graph travels with the copy
