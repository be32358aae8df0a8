"""Validation metrics from sufficient statistics and score histograms (train/evaluate.StreamingValidation)
against the exact, whole-split metrics (sklearn through train/metrics.evaluate_predictions)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ple_adatt.train.evaluate import StreamingValidation, predict_batches, validate_streaming
from ple_adatt.train.metrics import SCORE_BINS, histogram_auc, logit, score_bins


def _hist(scores: np.ndarray, y: np.ndarray, bins: int = SCORE_BINS):
    idx = score_bins(scores, bins)
    return np.bincount(idx[y == 1], minlength=bins), np.bincount(idx[y == 0], minlength=bins)


def realistic_scores(n: int, rate: float, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a trained-ish binary model: a rare positive class, a base-rate offset, classes
    shifted by ``separation`` (AUC ~ 0.7-0.9), quantised as a bf16 model output would be."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    z = logit(np.full(n, rate)) + separation * (y - rate) + rng.normal(0, 1.0, n)
    z = torch.from_numpy(z).to(torch.bfloat16).double().numpy()  # ties, as AMP produces them
    return z, y


@pytest.mark.parametrize("rate,separation", [(0.3, 1.0), (0.03, 1.5), (0.003, 2.0)])
def test_histogram_auc_within_its_bound_and_1e3_on_realistic_scores(rate, separation):
    z, y = realistic_scores(100_000, rate, separation, seed=int(rate * 1e4))
    auc, ap, auc_bound, ap_bound = histogram_auc(*_hist(z, y))
    exact_auc, exact_ap = roc_auc_score(y, z), average_precision_score(y, z)
    assert abs(auc - exact_auc) <= auc_bound + 1e-12
    assert abs(ap - exact_ap) <= ap_bound + 1e-12
    assert max(abs(auc - exact_auc), abs(ap - exact_ap)) <= 1e-3


def test_histogram_bound_holds_when_every_score_shares_a_bin():
    """The worst case: coarse bins put all rows in a handful of bins; the bound must still hold."""
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.2).astype(np.int64)
    z = rng.normal(0, 1, 5000) + y
    auc, ap, auc_bound, ap_bound = histogram_auc(*_hist(z, y, bins=8))
    assert auc_bound > 0.01  # the coarse case is really coarse
    assert abs(auc - roc_auc_score(y, z)) <= auc_bound
    assert abs(ap - average_precision_score(y, z)) <= ap_bound


def test_histogram_auc_equals_sklearn_when_bins_hold_single_scores():
    z = np.array([-3.0, -1.0, 0.0, 0.0, 2.0, 5.0])  # distinct bins except the exact tie, like sklearn's
    y = np.array([0, 1, 0, 1, 1, 0])
    auc, ap, auc_bound, _ = histogram_auc(*_hist(z, y))
    assert auc == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, z), abs=1e-12)
    assert auc_bound == pytest.approx(0.5 / 9)  # the one tied pair


def _batches(cfg, state, split: str, size: int):
    from ple_adatt.data.files import split_files
    from ple_adatt.data.preprocess import Packer
    from ple_adatt.launch.inference import to_tensors

    table = pads.dataset(split_files(cfg.dataset, split), format="parquet").to_table()
    packed = to_tensors(Packer(cfg.dataset, state, cfg.task_names(), with_oracles=True)(table))
    n = len(next(iter(packed.values())))
    return [{k: v[i:i + size] for k, v in packed.items()} for i in range(0, n, size)]


class NoisyOracle(torch.nn.Module):
    """A trained-ish model: each task's oracle (the generator's true probability / mean) plus noise,
    as logits. Its scores have a trained model's spread, unlike an untrained model's (all near 0)."""

    def __init__(self, cfg, noise: float = 0.7):
        super().__init__()
        self.types = {t: cfg.dataset.task(t).type for t in cfg.task_names()}
        self.noise = noise
        self.classes = {t: cfg.dataset.task(t).num_classes for t, k in self.types.items()
                        if k in ("multiclass", "contrastive")}

    def forward(self, batch):
        g = torch.Generator().manual_seed(int(batch["label/" + next(iter(self.types))].numel()))
        out = {}
        for t, kind in self.types.items():
            o = batch.get(f"oracle/{t}")
            if o is None:  # no oracle column: a label-informed score
                y = batch[f"label/{t}"]
                o = torch.nn.functional.one_hot(y.long().clamp_min(0), self.classes[t]) * 0.5 + 0.5 / self.classes[t] \
                    if t in self.classes else 0.25 + 0.5 * y if kind == "binary" else y
            o = o.double()
            z = torch.logit(o.clamp(1e-6, 1 - 1e-6)) if kind == "binary" else o.clamp_min(1e-6).log() \
                if t in self.classes else o
            out[t] = (z + self.noise * torch.randn(z.shape, generator=g, dtype=z.dtype)).float()
        return out


def test_streaming_validation_equals_exact_metrics_on_every_synthetic_task(synthetic_dataset):
    """All 16 synthetic tasks (binary, multiclass, regression, with oracle columns), scored by a
    trained-ish model: counts and sums equal the exact metrics; histogram AUC / PR-AUC (model and
    oracle) within 1e-3 of sklearn's."""
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.preprocess import fit_preprocessing
    from ple_adatt.data.targets import to_original_units
    from ple_adatt.train.calibration import calibration_metrics
    from ple_adatt.train.metrics import evaluate_predictions
    from ple_adatt.train.monitor import prediction_spreads
    from ple_adatt.train.step import validation_loss

    cfg = load_config("configs/experiments/synthetic_ple.yaml", [f"dataset={synthetic_dataset}"])
    state = fit_preprocessing(cfg.dataset)
    model = NoisyOracle(cfg)
    batches = _batches(cfg, state, "val", 128)
    preds = predict_batches(model, batches, cfg.task_names(), torch.device("cpu"), cfg=cfg)
    types = {t: cfg.dataset.task(t).type for t in cfg.task_names()}
    # as the loop reports them: loss, spreads and calibration in model units, metrics in original units
    exact = {**validation_loss(cfg, preds), **evaluate_predictions(types, to_original_units(preds, state.targets)),
             **prediction_spreads(types, preds), **calibration_metrics(types, preds)}
    stream = validate_streaming(model, batches, cfg, torch.device("cpu"), targets=state.targets)
    assert exact.keys() == stream.keys()
    assert {"binary", "multiclass", "regression"} <= set(types.values())
    assert any(k.endswith("/oracle_gap_auc") for k in stream) and any(k.endswith("/oracle_r2") for k in stream)
    for k, v in exact.items():
        if math.isnan(v):
            assert math.isnan(stream[k]), k
        elif k.rsplit("/", 1)[-1] in ("auc", "pr_auc", "oracle_auc", "oracle_pr_auc", "oracle_gap_auc",
                                      "oracle_gap_pr_auc"):
            assert stream[k] == pytest.approx(v, abs=1e-3), k
        elif k.endswith("/ece"):  # a float32 confidence on a bin edge may land in the next bin
            assert stream[k] == pytest.approx(v, abs=1e-3), k
        else:  # float32 (exact path) against float64 sums
            assert stream[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k


def test_oracle_metrics_drop_out_when_an_oracle_value_is_missing(synthetic_dataset):
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.preprocess import fit_preprocessing

    cfg = load_config("configs/experiments/synthetic_ple.yaml", [f"dataset={synthetic_dataset}"])
    state = fit_preprocessing(cfg.dataset)
    batch = _batches(cfg, state, "val", 64)[0]
    task = next(t for t in cfg.task_names() if cfg.dataset.task(t).type == "binary")
    batch[f"oracle/{task}"][batch[f"mask/{task}"].bool().nonzero()[0]] = float("nan")
    acc = StreamingValidation(cfg)
    out = {t: torch.zeros(64, *(() if cfg.dataset.task(t).type in ("binary", "regression")
                                 else (cfg.dataset.task(t).num_classes,))) for t in cfg.task_names()}
    acc.seen = 1
    acc.update(0, out, batch)
    acc.merge(1)
    m = acc.compute()
    assert f"{task}/oracle_auc" not in m and f"{task}/auc" in m
