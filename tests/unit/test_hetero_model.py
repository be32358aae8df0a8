"""The seed's PLE assembled from its blocks, on a small synthetic dataset (no Ray)."""
from __future__ import annotations

import pyarrow.dataset as pads
import pytest
import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import split_files
from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
from ple_adatt.launch.inference import to_tensors
from ple_adatt.train.build import build_adatt, build_model, build_weighting
from ple_adatt.train.step import Trainer

SEED_DAG = ["model.logit_transfer.enabled=true",
            "model.logit_transfer.edges=[{source: ctr, target: cvr}, {source: cvr, target: ltv}, "
            "{source: churn, target: retention}, {source: nba, target: spending_category}, "
            "{source: spending_category, target: brand_prediction}]"]


@pytest.fixture(scope="module")
def setup(synthetic_dataset):
    cfg = load_config("configs/experiments/synthetic_ple.yaml",
                      [f"dataset={synthetic_dataset}", "model.arch=ple_hetero", *SEED_DAG])
    state = fit_preprocessing(cfg.dataset)
    table = pads.dataset(split_files(cfg.dataset, "train"), format="parquet").head(64)
    batch = to_tensors(Packer(cfg.dataset, state, cfg.task_names())(table))
    return cfg, state, batch


def _model(cfg, state, *overrides):
    from ple_adatt.config.loading import apply_overrides, validate

    if overrides:
        cfg = validate(apply_overrides(cfg.model_dump(mode="json"), list(overrides), []))
    torch.manual_seed(0)
    return cfg, build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)


def test_full_model_emits_every_task_and_trains_every_block(setup):
    cfg, state, batch = setup
    cfg, model = _model(cfg, state)
    out = model(batch)
    assert out["ctr"].shape == (64,) and out["timing"].shape == (64, 28)
    assert out["brand_prediction"].shape == (64, 128)
    assert set(model.shared.expert_names) == {"deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal",
                                               "optimal_transport"}
    # The worker's own step (train/step.py): forward, weighting, regularisers, backward, update.
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(cfg, model, model, build_weighting(cfg), None, opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    terms = trainer.step(batch, 0).terms
    assert {"cgc_entropy", "dag"} <= set(terms)
    for name in ("shared.experts.temporal", "shared.attention", "basket", "transfer", "towers.brand_prediction"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_leave_one_out_and_no_basket(setup):
    cfg, state, batch = setup
    _, m = _model(cfg, state, "model.experts.disabled=[temporal]", "model.basket.enabled=false")
    assert "temporal" not in m.shared.expert_names and m.basket is None
    assert m(batch)["ctr"].shape == (64,)


def test_basket_reads_the_gate_factored_only_when_cgc_attention_is_the_only_gate(setup, one_thread):
    """The basket's factored first layer (gates.BlockScaled) needs the task representation to be
    CGCAttention's output alone; with `both` (CGCLayer output concatenated) the basket must get no factors."""
    cfg, state, batch = setup
    for kind, factored in (("attention", True), ("both", False)):
        _, m = _model(cfg, state, f"model.gate.kind={kind}", "model.experts.use=[deepfm, hgcn]")
        reps, f = m.shared.gated(batch)
        assert (f is not None) == factored, kind
        if f is not None:
            assert all(torch.equal(a, b) for a, b in zip(f.expand().values(), reps.values()))
        assert m(batch)["ctr"].shape == (64,)


def test_adatt_runs_on_the_full_model(setup):
    cfg, state, batch = setup
    cfg, model = _model(cfg, state, "adatt.enabled=true", "adatt.grad_interval=1")
    adatt = build_adatt(cfg)
    adatt.on_epoch_start(2, 5)  # dynamic phase with defaults (warmup 0.3, freeze 0.8)
    before = adatt.affinity.clone()  # identity: no measurement yet
    opt = torch.optim.SGD([*model.parameters(), *adatt.parameters()], lr=0.0)
    trainer = Trainer(cfg, model, model, build_weighting(cfg), adatt, opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    out = trainer.step(batch, 0)
    assert out.finite and "adatt/transfer_entropy" in out.terms
    assert not torch.equal(adatt.affinity, before)  # measured on the shared experts (affinity_on: parameters)
    assert adatt.W.grad is not None


def test_param_count_of_default_full_model(setup):
    cfg, state, _ = setup
    _, m = _model(cfg, state)
    n = sum(p.numel() for p in m.parameters())
    assert 200_000 < n < 2_000_000, n


def test_affinity_targets_for_each_mode(setup):
    from ple_adatt.train.step import affinity_target

    cfg, state, batch = setup
    got = {}
    for mode in ("parameters", "expert_heads", "representation"):
        c, model = _model(cfg, state, "adatt.enabled=true", f"adatt.affinity_on={mode}")
        model(batch)
        got[mode] = affinity_target(c, model)
    shared = {id(p) for p in model.shared_parameters()}
    heads = {id(p) for p in model.shared_head_parameters()}
    assert len(got["expert_heads"]["params"]) == len(heads) < len(got["parameters"]["params"])
    assert heads and heads < shared  # the heads are a strict subset of the shared-expert parameters
    z = got["representation"]["representation"]
    assert z.requires_grad and z.shape[0] == 64


def test_expert_head_affinity_on_a_baseline_uses_each_shared_mlps_last_layer(setup):
    from ple_adatt.train.step import affinity_target

    cfg, state, batch = setup
    c, model = _model(cfg, state, "model.arch=mmoe", "model.num_experts=3", "adatt.enabled=true",
                      "adatt.affinity_on=expert_heads")
    params = affinity_target(c, model)["params"]
    last = [m for m in model.extractor.experts[0].modules() if isinstance(m, torch.nn.Linear)][-1]
    assert len(params) == 3 * 2 and params[0] is last.weight  # weight + bias of 3 experts' output layers


def test_representation_affinity_needs_the_hetero_model(setup):
    from ple_adatt.config.loading import ConfigError

    cfg, state, _ = setup
    with pytest.raises(ConfigError, match="adatt.affinity_on: representation needs model.arch=ple_hetero"):
        _model(cfg, state, "model.arch=mmoe", "adatt.enabled=true", "adatt.affinity_on=representation")


def test_basket_skip_feeds_towers_the_basket_output_and_the_task_representation(setup):
    cfg, state, batch = setup
    _, seed_layout = _model(cfg, state, "model.basket.skip=false")
    _, skip = _model(cfg, state, "model.basket.skip=true")
    seed_layout.eval(), skip.eval()  # no dropout: two forwards must agree
    h_seed, h_skip = seed_layout.task_inputs(batch), skip.task_inputs(batch)
    reps = skip.shared(batch)
    hmm = skip.shared.hmm.embed_dim if hasattr(skip.shared.hmm, "embed_dim") else 32
    assert h_seed["ctr"].shape == (64, 32)
    assert h_skip["ctr"].shape == (64, 32 + reps["ctr"].shape[1] + hmm)
    assert torch.equal(h_skip["ctr"][:, 32:32 + reps["ctr"].shape[1]], reps["ctr"])  # the task's own gated repr
    assert skip(batch)["timing"].shape == (64, 28)
