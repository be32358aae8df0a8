"""Task side: basket, cluster routing, logit transfer, towers, SAE, evidential heads."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats

from ple_adatt.model.evidential import DirichletHead, NIGHead, dirichlet_loss, kl_to_uniform_dirichlet, nig_loss
from ple_adatt.model.sae import SparseAutoencoder
from ple_adatt.model.task_side import (
    ClusterTaskExpertBasket,
    GroupTaskExpertBasket,
    LogitTransfer,
    kahn_order,
    task_basket,
)
from ple_adatt.model.towers import ContrastiveTower, TaskTower, activate

# The seed's 16 active tasks (spec §2.1) and their groups / HMM modes (§2.2, §4.4).
GROUPS = {
    "engagement": ["ctr", "cvr", "engagement"],
    "lifecycle": ["churn", "retention", "life_stage", "ltv"],
    "value": ["balance_util", "channel", "timing"],
    "consumption": ["nba", "spending_category", "consumption_cycle", "spending_bucket", "merchant_affinity",
                    "brand_prediction"],
}
TASK_GROUP = {t: g for g, ts in GROUPS.items() for t in ts}
MODE = {"engagement": "journey", "lifecycle": "lifecycle", "value": "behavior", "consumption": "behavior"}
TASK_MODE = {t: MODE[g] for t, g in TASK_GROUP.items()}
SEED_EDGES = [("ctr", "cvr"), ("cvr", "ltv"), ("churn", "retention"), ("nba", "spending_category"),
              ("spending_category", "brand_prediction")]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def block_params(i, o):  # Linear(i, o) + LayerNorm(o)
    return i * o + o + 2 * o


# ---- Kahn order --------------------------------------------------------------------------

def test_kahn_order_seed_dag_with_alphabetical_declaration():
    tasks = sorted(TASK_GROUP)
    # Hand-run of Kahn with a min-heap on declaration index: brand_prediction (index 1) is
    # ready only after spending_category, cvr after ctr, ltv after cvr, retention after churn.
    assert kahn_order(tasks, SEED_EDGES) == [
        "balance_util", "channel", "churn", "consumption_cycle", "ctr", "cvr", "engagement", "life_stage",
        "ltv", "merchant_affinity", "nba", "retention", "spending_bucket", "spending_category",
        "brand_prediction", "timing",
    ]


def test_kahn_order_keeps_declared_order_when_already_topological():
    tasks = [t for ts in GROUPS.values() for t in ts]
    assert kahn_order(tasks, []) == tasks
    order = kahn_order(tasks, SEED_EDGES)
    assert all(order.index(s) < order.index(t) for s, t in SEED_EDGES)


def test_cycle_error_names_the_cycle():
    with pytest.raises(ValueError, match=r"logit-transfer edges form a cycle: a -> b -> c -> a$"):
        kahn_order(["d", "a", "b", "c"], [("c", "a"), ("a", "b"), ("b", "c"), ("c", "d")])
    with pytest.raises(ValueError, match=r"cycle: x -> x"):
        kahn_order(["x", "y"], [("x", "x")])


def test_unknown_task_in_edges_is_named():
    with pytest.raises(ValueError, match=r"unknown tasks \['zzz'\]"):
        kahn_order(["a"], [("a", "zzz")])


# ---- basket -------------------------------------------------------------------------------

def make_basket(per_cluster=False, d=16, hmm_dim=4, n_clusters=3, cluster_dim=5):
    torch.manual_seed(0)
    return task_basket(
        per_cluster=per_cluster, task_dims={"ctr": d, "cvr": d, "churn": d}, task_groups=TASK_GROUP,
        task_modes=TASK_MODE, hmm_dim=hmm_dim, n_clusters=n_clusters, cluster_dim=cluster_dim,
        hidden_dims=(8,), out_dim=6,
    ).eval()


def basket_inputs(b=4, d=16, hmm_dim=4):
    torch.manual_seed(1)
    x = {t: torch.randn(b, d) for t in ("ctr", "cvr", "churn")}
    hmm = {m: torch.randn(b, hmm_dim) for m in ("journey", "lifecycle")}
    return x, hmm


@pytest.mark.parametrize("per_cluster", [False, True])
def test_soft_routing_equals_hard_lookup_for_one_hot_posteriors(per_cluster):
    basket = make_basket(per_cluster)
    x, hmm = basket_inputs()
    ids = torch.tensor([0, 2, 1, 2])
    soft = basket(x, hmm, cluster_probs=F.one_hot(ids, 3).float())
    hard = basket(x, hmm, cluster_ids=ids)
    for t in x:
        torch.testing.assert_close(soft[t], hard[t])


def test_soft_routing_mixes_cluster_embeddings():
    basket = make_basket()
    x, hmm = basket_inputs(b=1)
    p = torch.tensor([[0.25, 0.75, 0.0]])
    e = 0.25 * basket.cluster_embed.weight[0] + 0.75 * basket.cluster_embed.weight[1]
    enc = basket.encoders["engagement"]
    expected = enc(torch.cat([x["ctr"], hmm["journey"], e[None]], -1))
    torch.testing.assert_close(basket(x, hmm, cluster_probs=p)["ctr"], expected)


def test_group_members_share_one_encoder_and_widths_are_derived():
    basket = make_basket()
    assert set(basket.encoders) == {"engagement", "lifecycle"}
    assert basket.encoders["engagement"][0].in_features == 16 + 4 + 5
    x, hmm = basket_inputs()
    x["cvr"] = x["ctr"].clone()  # same input -> same output, because ctr and cvr share MLP_g
    out = basket(x, hmm, cluster_ids=torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(out["ctr"], out["cvr"])
    assert out["churn"].shape == (4, 6)


def test_basket_errors_are_clear():
    with pytest.raises(ValueError, match=r"tasks without a group: \['nope'\]"):
        GroupTaskExpertBasket(task_dims={"nope": 4}, task_groups={})
    with pytest.raises(ValueError, match="different widths"):
        GroupTaskExpertBasket(task_dims={"ctr": 4, "cvr": 5}, task_groups=TASK_GROUP)
    basket = make_basket()
    x, hmm = basket_inputs()
    with pytest.raises(ValueError, match="pass cluster_probs"):
        basket(x, hmm)
    with pytest.raises(ValueError, match=r"reads HMM mode 'lifecycle'"):
        basket(x, {"journey": hmm["journey"]}, cluster_ids=torch.zeros(4, dtype=torch.long))


def test_task_without_hmm_mode_gets_zero_slice():
    basket = GroupTaskExpertBasket(task_dims={"a": 3}, task_groups={"a": "g"}, task_modes={}, hmm_dim=2,
                                   n_clusters=0, hidden_dims=(), out_dim=4).eval()
    x = torch.randn(2, 3)
    torch.testing.assert_close(basket({"a": x})["a"], basket.encoders["g"](torch.cat([x, torch.zeros(2, 2)], -1)))


def test_parameter_counts_group_vs_legacy_on_seed_sizes():
    # Seed sizes (G1'): CGC output 512, HMM projection 32, 20 x 32 cluster table, 576 -> 128 -> 64 -> 32.
    dims = {t: 512 for t in TASK_GROUP}
    with torch.device("meta"):  # count without allocating the legacy basket's 25.8 M floats
        group = GroupTaskExpertBasket(task_dims=dims, task_groups=TASK_GROUP, task_modes=TASK_MODE)
        legacy = ClusterTaskExpertBasket(task_dims=dims, task_modes=TASK_MODE)
    encoder = block_params(576, 128) + block_params(128, 64) + block_params(64, 32)  # 84,640
    assert n_params(group) == 4 * encoder + 20 * 32 == 339_200
    per_pair = block_params(544, 128) + block_params(128, 64) + block_params(64, 32)  # no cluster input
    assert n_params(legacy) == 16 * 20 * per_pair == 25_774_080


# ---- logit transfer -----------------------------------------------------------------------

def test_logit_transfer_residual_formula_by_hand():
    tr = LogitTransfer(["ctr", "cvr"], {"ctr": "binary", "cvr": "binary"}, {"ctr": 1, "cvr": 1},
                       [("ctr", "cvr", 0.5)], hidden_dim=2)
    lin = tr.proj["ctr__cvr"][0]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0], [2.0]]))
        lin.bias.zero_()
    h = torch.tensor([[1.0, -1.0]])
    # ŷ = sigmoid(0) = 0.5 -> Linear -> [0, 1] -> LayerNorm -> ±0.5/sqrt(0.25 + 1e-5) -> SiLU.
    z = 0.5 / math.sqrt(0.25 + 1e-5)
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([[1.0 + 0.5 * silu(-z), -1.0 + 0.5 * silu(z)]])
    torch.testing.assert_close(tr("cvr", h, {"ctr": torch.zeros(1)}), expected)
    assert tr("ctr", h, {}) is h  # no sources: identity
    with pytest.raises(KeyError, match="transfer ctr -> cvr"):
        tr("cvr", h, {})


@pytest.mark.parametrize("detach", [False, True])
def test_logit_transfer_detach_option(detach):
    tr = LogitTransfer(["nba", "cat"], {"nba": "multiclass", "cat": "multiclass"}, {"nba": 3, "cat": 4},
                       [("nba", "cat", 0.5)], hidden_dim=8, detach_source=detach)
    src = torch.randn(2, 3, requires_grad=True)
    tr("cat", torch.zeros(2, 8), {"nba": src}).sum().backward()
    assert (src.grad is None) == detach


def test_seed_dag_end_to_end_shapes():
    tasks = ["ctr", "cvr", "ltv", "nba", "spending_category", "brand_prediction"]
    types = {"ctr": "binary", "cvr": "binary", "ltv": "regression", "nba": "multiclass",
             "spending_category": "multiclass", "brand_prediction": "contrastive"}
    dims = {"ctr": 1, "cvr": 1, "ltv": 1, "nba": 12, "spending_category": 12, "brand_prediction": 50}
    edges = [(s, t, 0.5) for s, t in SEED_EDGES if s in tasks and t in tasks]
    tr = LogitTransfer(tasks, types, dims, edges)
    towers = {t: ContrastiveTower(32, 50) if types[t] == "contrastive" else TaskTower(32, dims[t]) for t in tasks}
    logits = {}
    for t in tr.order:
        logits[t] = towers[t](tr(t, torch.randn(5, 32), logits))
    assert {t: tuple(v.shape) for t, v in logits.items()} == {
        "ctr": (5,), "cvr": (5,), "ltv": (5,), "nba": (5, 12), "spending_category": (5, 12),
        "brand_prediction": (5, 50)}


# ---- towers ---------------------------------------------------------------------------------

def test_task_tower_layout_and_shapes():
    tower = TaskTower(32, 1)
    kinds = [type(m).__name__ for m in tower.body]
    assert kinds == ["Linear", "LayerNorm", "SiLU", "Dropout"] * 2
    assert [tower.body[0].out_features, tower.body[4].out_features] == [64, 32]
    assert tower(torch.randn(3, 32)).shape == (3,)
    assert TaskTower(32, 6)(torch.randn(3, 32)).shape == (3, 6)
    with pytest.raises(ValueError, match="unknown task type 'ranking'"):
        activate("ranking", torch.zeros(1))


def test_contrastive_tower_logits_are_cosine_over_tau():
    tower = ContrastiveTower(8, num_items=10, embed_dim=4, tau=0.1).eval()
    h = torch.randn(3, 8)
    q, k = tower.embed(h), tower.keys()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(10))
    logits = tower(h)
    torch.testing.assert_close(logits, q @ k.T / 0.1)
    assert logits.abs().max() <= 1 / 0.1 + 1e-4


# ---- SAE ------------------------------------------------------------------------------------

def test_sae_loss_by_hand_and_detached_input():
    sae = SparseAutoencoder(2, expansion=1, l1=1e-3)
    with torch.no_grad():
        sae.weight.copy_(torch.eye(2))
    h = torch.tensor([[1.0, -2.0]], requires_grad=True)
    z, recon, loss = sae(h)
    # z = relu(h) = [1, 0]; decoder rows are unit -> recon = [1, 0]; ‖h − ĥ‖² = 4; ‖z‖₁ = 1.
    torch.testing.assert_close(z, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(loss, torch.tensor(4.0 + 1e-3))
    loss.backward()
    assert h.grad is None and sae.weight.grad is not None


# ---- evidential -----------------------------------------------------------------------------

def test_dirichlet_head_uncertainty_and_loss_by_hand():
    head = DirichletHead(4, 3)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
    out = head(torch.randn(2, 4))
    a = 1 + math.log(2)  # softplus(0) + 1
    torch.testing.assert_close(out["uncertainty"], torch.full((2,), 3 / (3 * a)))
    torch.testing.assert_close(out["prob"], torch.full((2, 3), 1 / 3))
    y = torch.tensor([0, 2])
    risk = special.digamma(3 * a) - special.digamma(a)
    torch.testing.assert_close(dirichlet_loss(out["alpha"], y, epoch=0), torch.tensor(risk, dtype=torch.float32))
    # Sensoy's α̃ = (1, a, a) for label 0; KL(Dir(α̃) ‖ Dir(1)) from the closed form.
    at = [1.0, a, a]
    s = sum(at)
    kl = (math.lgamma(s) - math.lgamma(3) - sum(math.lgamma(v) for v in at)
          + sum((v - 1) * (special.digamma(v) - special.digamma(s)) for v in at))
    full = dirichlet_loss(out["alpha"], y, epoch=20, anneal_epochs=10, kl_weight=0.01)
    half = dirichlet_loss(out["alpha"], y, epoch=5, anneal_epochs=10, kl_weight=0.01)
    torch.testing.assert_close(full, torch.tensor(risk + 0.01 * kl, dtype=torch.float32))
    torch.testing.assert_close(half, torch.tensor(risk + 0.005 * kl, dtype=torch.float32))
    torch.testing.assert_close(kl_to_uniform_dirichlet(torch.ones(1, 4)), torch.zeros(1))


def test_nig_nll_is_student_t_and_uncertainty():
    out = {k: torch.tensor([v]) for k, v in {"mu": 0.3, "v": 2.0, "alpha": 3.0, "beta": 1.5}.items()}
    out["uncertainty"] = out["beta"] / (out["v"] * (out["alpha"] - 1))
    y = torch.tensor([1.1])
    # NIG marginal likelihood = Student-t(2α dof, loc μ, scale² = β(1 + v)/(vα)) (Amini et al.).
    scale = math.sqrt(1.5 * 3.0 / (2.0 * 3.0))
    nll = -stats.t.logpdf(1.1, df=6.0, loc=0.3, scale=scale)
    expected = nll + 0.01 * 0.8 * (2 * 2.0 + 3.0)
    torch.testing.assert_close(nig_loss(out, y), torch.tensor(expected, dtype=torch.float32))
    head_out = NIGHead(4)(torch.randn(5, 4))
    assert (head_out["alpha"] > 1).all() and (head_out["uncertainty"] > 0).all()
    masked = nig_loss(head_out, torch.full((5,), float("nan")), mask=torch.zeros(5, dtype=torch.bool))
    assert masked.item() == 0.0
