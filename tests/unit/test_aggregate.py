"""Total-loss aggregation and InfoNCE against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from ple_adatt.losses.aggregate import aggregate_losses
from ple_adatt.losses.infonce import catalogue_info_nce, in_batch_info_nce, info_nce
from ple_adatt.losses.weighting import UncertaintyWeighting
from ple_adatt.model.towers import ContrastiveTower


def test_aggregation_order_and_terms_by_hand():
    w = UncertaintyWeighting(["a", "b"], {"a": 2.0})
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    weighted, extra = w({"a": torch.tensor(3.0), "b": torch.tensor(1.0)})
    seen = {}

    def adatt(losses):  # toy hook: each task gets 0.1 × the other task's weighted loss
        seen.update(losses)
        return {"a": losses["a"] + 0.1 * losses["b"], "b": losses["b"] + 0.1 * losses["a"]}

    total, terms = aggregate_losses(weighted, extra, transfer=adatt, evidential=torch.tensor(0.2),
                                    cgc_entropy=torch.tensor(-0.05), dag=torch.tensor(0.3), sae=torch.tensor(4.0))
    # weighted: a = 2·(1/2)·3 = 3, b = 1; extra = 2·ln 2; adaTT adds 0.1 and 0.3; SAE 0.01·4.
    assert {k: round(v.item(), 5) for k, v in seen.items()} == {"a": 3.0, "b": 1.0}  # adaTT sees no s_k
    expected = 3 + 1 + 0.1 + 0.3 + 2 * math.log(2) + 0.2 - 0.05 + 0.3 + 0.04
    assert total.item() == pytest.approx(expected, abs=1e-5)
    assert terms["transfer/a"].item() == pytest.approx(0.1) and terms["transfer/b"].item() == pytest.approx(0.3)
    assert terms["sae"].item() == pytest.approx(0.04)
    assert set(terms) == {"task/a", "task/b", "transfer/a", "transfer/b", "weighting_reg", "evidential",
                          "cgc_entropy", "dag", "sae", "total"}
    assert all(not v.requires_grad for v in terms.values())
    total.backward()
    assert w.log_vars.grad is not None


def test_aggregation_without_optional_terms_and_without_tasks():
    total, terms = aggregate_losses({"a": torch.tensor(2.0)}, torch.tensor(0.0))
    assert total.item() == 2.0 and set(terms) == {"task/a", "weighting_reg", "total"}
    total, terms = aggregate_losses({}, torch.tensor(0.5), transfer=lambda d: d, dag=torch.tensor(1.0))
    assert total.item() == 1.5
    dag = {"dag": torch.tensor(0.25), "sparse": torch.tensor(0.5), "rec": torch.tensor(1.0)}
    total, terms = aggregate_losses({"a": torch.tensor(1.0)}, torch.tensor(0.0), dag=dag)
    assert total.item() == 2.75 and terms["dag"].item() == 1.75 and terms["dag/sparse"].item() == 0.5


def test_aggregation_accepts_hook_with_diagnostics():
    def hook(losses):  # AdaTT.transfer_losses style: (enhanced, diagnostics)
        return {t: 2 * v for t, v in losses.items()}, {"adatt/transfer_ratio": torch.tensor(1.0)}

    total, terms = aggregate_losses({"a": torch.tensor(1.5)}, torch.tensor(0.0), transfer=hook)
    assert total.item() == 3.0 and terms["transfer/a"].item() == 1.5
    assert terms["adatt/transfer_ratio"].item() == 1.0


def test_aggregation_rejects_hook_that_changes_tasks():
    with pytest.raises(ValueError, match=r"adaTT hook changed the task set: got \['a'\], expected \['a', 'b'\]"):
        aggregate_losses({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, torch.tensor(0.0),
                         transfer=lambda d: {"a": d["a"]})


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = [1, 0]/0.5 = [2, 0]; loss = −log(e²/(e² + 1)) = log(1 + e^{−2}).
    assert info_nce(q, keys, torch.tensor([0]), tau=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_catalogue_info_nce_equals_ce_over_similarity_logits():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(6, 8), dim=-1)
    table = F.normalize(torch.randn(20, 8), dim=-1)
    y = torch.tensor([1, 2, 3, 1, 5, 19])
    torch.testing.assert_close(catalogue_info_nce(q, table, y, tau=0.07), F.cross_entropy(q @ table.T / 0.07, y))
    tower = ContrastiveTower(4, num_items=20, embed_dim=8).eval()
    h = torch.randn(6, 4)
    torch.testing.assert_close(catalogue_info_nce(tower.embed(h), tower.keys(), y, tau=tower.tau),
                               F.cross_entropy(tower(h), y))


def test_in_batch_info_nce_equals_ce_and_masks_duplicates():
    torch.manual_seed(1)
    q, k = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    logits = q @ k.T / 0.1
    torch.testing.assert_close(in_batch_info_nce(q, k, tau=0.1), F.cross_entropy(logits, torch.arange(4)))
    # Rows 0 and 2 share a label: each drops the other from its negatives.
    labels = torch.tensor([7, 8, 7, 9])
    masked = logits.clone()
    masked[0, 2] = masked[2, 0] = float("-inf")
    torch.testing.assert_close(in_batch_info_nce(q, k, tau=0.1, labels=labels),
                               F.cross_entropy(masked, torch.arange(4)))


def test_sampled_info_nce_and_masks():
    torch.manual_seed(2)
    q, table = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(10, 4), dim=-1)
    y = torch.tensor([1, 4, 6])
    g = torch.Generator().manual_seed(3)
    neg = torch.randint(0, 10, (5,), generator=torch.Generator().manual_seed(3))
    assert (neg[None] == y[:, None]).any()  # the draw contains an accidental hit (item 6)
    logits = torch.cat([(q * table[y]).sum(-1, keepdim=True), q @ table[neg].T], 1) / 0.2
    logits = logits.masked_fill(torch.cat([torch.zeros(3, 1, dtype=torch.bool), neg[None] == y[:, None]], 1),
                                float("-inf"))
    got = catalogue_info_nce(q, table, y, tau=0.2, num_negatives=5, generator=g)
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.zeros(3, dtype=torch.long)))
    # Unlabelled rows (mask False, label −1) are dropped; an empty batch gives a 0 with a graph.
    mask = torch.tensor([True, False, True])
    y_null = torch.tensor([1, -1, 6])
    torch.testing.assert_close(catalogue_info_nce(q, table, y_null, tau=0.2, mask=mask),
                               F.cross_entropy(q[mask] @ table.T / 0.2, y_null[mask]))
    qg = q.clone().requires_grad_(True)
    empty = catalogue_info_nce(qg, table, y_null, mask=torch.zeros(3, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and qg.grad is not None
