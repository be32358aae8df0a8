"""Issue 3: a model fed the oracle columns reaches the oracle metric.

If the stored oracles were not the Bayes-optimal predictions of the labels, or the evaluator
computed model and oracle metrics differently, a model that sees the oracle itself would miss
the oracle metric (or beat it). Trained in process on the synthetic fixture, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ple_adatt.config.loading import load_config, load_dataset_dict
from ple_adatt.data.files import split_files
from ple_adatt.data.synthetic import generate, load_generator_config
from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
from ple_adatt.data.targets import to_original_units
from ple_adatt.launch.inference import to_tensors
from ple_adatt.train.build import build_model, build_weighting
from ple_adatt.train.evaluate import predict_batches
from ple_adatt.train.step import task_losses
from ple_adatt.train.metrics import evaluate_predictions

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["ctr", "churn", "engagement", "balance_util"]  # the scalar oracles: P(y=1|x) or E[y|x]


@pytest.fixture(scope="module")
def oracle_fed(tmp_path_factory):
    """6000 synthetic customers whose only features are the oracles: logit P(y=1|x) for binary
    tasks (a scale an MLP resolves near 0 and 1), E[y|x] for regression ones."""
    gen = load_generator_config(ROOT / "configs/datasets/synthetic_financial.yaml",
                                ["gmm_fit_rows=500", "calibration_rows=2048"])
    spec = load_dataset_dict(generate(gen, 6000, tmp_path_factory.mktemp("synthetic6k") / "data", seed=1))
    tasks = {t["name"]: t for t in spec["tasks"] if t["name"] in TASKS}
    out = tmp_path_factory.mktemp("oracle_fed")
    for split in ("train", "val"):
        table = pads.dataset(spec["splits"][split], format="parquet").to_table()
        cols = {}
        for name, t in tasks.items():
            o = table.column(t["oracle"]).to_numpy()
            cols[f"x_{name}"] = np.log(o / (1 - o)) if t["type"] == "binary" else o
            cols[t["label"]], cols[t["oracle"]] = table.column(t["label"]), table.column(t["oracle"])
        (out / split).mkdir()
        pq.write_table(pa.table(cols), out / split / "part-0.parquet")
    paths = {}
    for name, t in tasks.items():  # one dataset per task: its own oracle is its only feature
        ds = {"name": f"oracle-fed-{name}", "splits": {"train": "train/", "val": "val/"},
              "groups": {"oracle": {"kind": "numeric", "columns": [f"x_{name}"], "experts": ["mlp"]}},
              "tasks": [{k: t[k] for k in ("name", "type", "label", "oracle")}]}
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(ds, sort_keys=False))
    return paths


def _tensors(cfg, state, split):
    spec, tasks = cfg.dataset, cfg.task_names()
    table = pads.dataset(split_files(spec, split), format="parquet").to_table()
    return to_tensors(Packer(spec, state, tasks, with_oracles=True)(table))


@pytest.mark.parametrize("task", TASKS)
def test_model_fed_the_oracle_reaches_the_oracle_metric(oracle_fed, task):
    cfg = load_config("configs/smoke/tiny.yaml", [
        f"dataset={oracle_fed[task]}", "model.arch=single_task", "model.expert_hidden=[16]",
        "model.tower_hidden=[16]", "model.dropout=0.0", "loss_weighting.name=fixed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only add contention on a busy machine
    try:
        _train_and_check(cfg, task)
    finally:
        torch.set_num_threads(threads)


def _train_and_check(cfg, task):
    state = fit_preprocessing(cfg.dataset)
    train, val = _tensors(cfg, state, "train"), _tensors(cfg, state, "val")
    torch.manual_seed(0)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k, targets=state.targets)
    weighting = build_weighting(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = len(train[f"label/{task}"])
    # cosine to 0 as in the real loop: a constant lr leaves Adam's step-size jitter in the outputs,
    # which in standardised target units is 1/std(y) times larger in the label's units
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20 * -(-n // 256))
    for _ in range(20):
        model.train()
        for idx in torch.randperm(n).split(256):
            batch = {k: v[idx] for k, v in train.items()}
            losses = task_losses(cfg, model(batch), batch)
            weighted, _ = weighting(losses, {t: True for t in losses})
            opt.zero_grad()
            sum(weighted.values()).backward()
            opt.step()
            sched.step()
    kind = cfg.dataset.task(task).type
    m = evaluate_predictions({task: kind}, to_original_units(predict_batches(model, [val], [task], torch.device("cpu")),
                                                             state.targets))
    if kind == "binary":  # AUC is rank-based: a model monotone in P(y=1|x) ties the oracle
        assert abs(m[f"{task}/oracle_gap_auc"]) < 0.002, (m[f"{task}/auc"], m[f"{task}/oracle_auc"])
    else:                 # the RMSE of E[y|x] is the noise level; this 16-unit MLP on 4800 rows lands
        # 0.4-1.1 % above it over torch seeds 0-2 (standardised targets), so 2 % separates a real miss
        assert abs(m[f"{task}/oracle_gap_rmse"]) < 0.02 * m[f"{task}/oracle_rmse"], (m[f"{task}/rmse"],
                                                                                     m[f"{task}/oracle_rmse"])
