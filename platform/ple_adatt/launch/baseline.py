"""A GBDT reference for any dataset YAML: LightGBM per task on the model's own splits and features.

The features are the model's inputs, packed by the same `Packer` with the same train-split
preprocessing state (data/preprocess.py): numeric and list groups flattened to columns (a [T, F]
sequence becomes T*F columns), categorical groups as LightGBM categorical features with the model's
vocabulary codes (0 = unseen/null, the same `max_vocab` cut), cluster posteriors and HMM columns
as numbers. Labels are in their original units. Each task is one Ray task (one CPU) that fits on the
train split with early stopping on the validation split, as the model's checkpoint selection does.
Metrics come from the model's own evaluator (train/metrics.py), so names and values compare
one to one: `val/<task>/auc`, `test/<task>/rmse`, oracle gaps included.

The splits are packed in memory on the driver (a GBDT needs its data in memory anyway).

    result = run_baseline(cfg)            # {"metrics": {...}, "tasks": {...}, "files": {...}}
"""
from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from ple_adatt.config import storage
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import check_dataset
from ple_adatt.data.preprocess import PreprocessState, fit_preprocessing, packed_batches
from ple_adatt.data.targets import original_units
from ple_adatt.train.metrics import evaluate_predictions
from ple_adatt.train.reporting import fmt_duration, say

LGBM_PARAMS = {"learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 20, "feature_fraction": 0.9,
               "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "num_threads": 1}
"""LightGBM settings of the reference (a sound default, not tuned per table)."""
MAX_ROUNDS, EARLY_STOP = 2000, 100
"""Boosting rounds at most; stop after this many rounds without a validation improvement."""


def feature_matrix(cfg: ExperimentConfig, state: PreprocessState, split: str, batch_rows: int = 65_536) -> dict:
    """One split packed like the model's inputs -> {"X" [N, F] float32, "names" [F], "categorical"
    [indices], "label/<t>", "mask/<t>", "oracle/<t>"} (labels in original units)."""
    spec, tasks = cfg.dataset, cfg.task_names()
    parts = list(packed_batches(spec, state, tasks, split, batch_rows))
    packed = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    blocks, names, categorical = [], [], []
    for key in sorted(k for k in packed if k.split("/", 1)[0] in ("feat", "cat", "hmm") or k == "cluster_probs"):
        x = packed[key].reshape(len(packed[key]), -1).astype(np.float32)
        if key.startswith("cat/"):
            categorical += range(sum(b.shape[1] for b in blocks), sum(b.shape[1] for b in blocks) + x.shape[1])
        names += [f"{key.replace('/', '.')}.{i}" for i in range(x.shape[1])]
        blocks.append(x)
    out = {"X": np.concatenate(blocks, 1), "names": names, "categorical": list(categorical)}
    for t in tasks:
        out[f"label/{t}"] = original_units(state.targets.get(t), packed[f"label/{t}"])
        out[f"mask/{t}"] = packed[f"mask/{t}"]
        if f"oracle/{t}" in packed:
            out[f"oracle/{t}"] = packed[f"oracle/{t}"]
    return out


def fit_one_task(task: str, task_type: str, num_classes: int | None, data: dict, seed: int = 0,
                 max_rounds: int = MAX_ROUNDS) -> dict:
    """LightGBM on one task -> {"metrics": {"<split>/<task>/<m>": v}, "rounds": best iteration}.
    Outputs are turned into the model's logit format (raw scores) so the evaluator is the same."""
    import lightgbm as lgb

    if task_type == "contrastive":  # a catalogue-scoring task has no GBDT analogue; treated as multiclass
        task_type = "multiclass"
    params = {**LGBM_PARAMS, "seed": seed}
    if task_type == "binary":
        params.update(objective="binary", metric="binary_logloss")
    elif task_type == "multiclass":
        params.update(objective="multiclass", num_class=num_classes, metric="multi_logloss")
    else:
        params.update(objective="regression", metric="l2")

    def dataset(split, reference=None):
        d = data[split]
        m = d[f"mask/{task}"]
        return lgb.Dataset(d["X"][m], d[f"label/{task}"][m], feature_name=d["names"],
                           categorical_feature=d["categorical"], reference=reference, free_raw_data=False)

    train = dataset("train")
    val = dataset("val", train)
    booster = lgb.train(params, train, num_boost_round=max_rounds, valid_sets=[val],
                        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])
    metrics = {}
    for split, d in data.items():
        if split == "train":
            continue
        raw = booster.predict(d["X"], raw_score=task_type != "regression", num_iteration=booster.best_iteration)
        p = {"logits": np.asarray(raw, np.float64), "label": d[f"label/{task}"], "mask": d[f"mask/{task}"]}
        if f"oracle/{task}" in d:
            p["oracle"] = d[f"oracle/{task}"]
        for k, v in evaluate_predictions({task: task_type}, {task: p}).items():
            if not k.startswith("avg/"):
                metrics[f"{split}/{k}"] = v
    return {"metrics": metrics, "rounds": int(booster.best_iteration or booster.current_iteration())}


def baseline_dir(cfg: ExperimentConfig) -> str:
    """Where the baseline's files go: <run.storage_path>/<run name>-gbdt."""
    from ple_adatt.launch.fit import storage_dir

    return storage.join(storage_dir(cfg), f"{cfg.run_name()}-gbdt")


def run_baseline(cfg: ExperimentConfig, out_dir: str | None = None, verbose: bool = True) -> dict:
    """Fit the GBDT reference for every active task as parallel Ray tasks; log one MLflow run
    (metrics named like the model's), write baseline.json and baseline.csv. Returns the JSON dict."""
    import ray

    from ple_adatt.launch.fit import ensure_ray
    from ple_adatt.tracking import mlflow_tracking as mt

    splits = ("train", "val", "test") if cfg.dataset.splits.test is not None else ("train", "val")
    check_dataset(cfg.dataset, splits, cfg.task_names())
    state = fit_preprocessing(cfg.dataset)
    data = {s: feature_matrix(cfg, state, s) for s in splits}
    ensure_ray()
    ref = ray.put(data)
    fit_remote = ray.remote(num_cpus=1)(fit_one_task)
    tasks = cfg.task_names()
    futures = {t: fit_remote.remote(t, cfg.dataset.task(t).type, cfg.dataset.task(t).num_classes, ref, cfg.train.seed)
               for t in tasks}
    fitted, pending, t0 = {}, {f: t for t, f in futures.items()}, time.perf_counter()
    while pending:  # one line per finished task: a many-class task can take minutes
        done, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(done[0])
        fitted[task] = ray.get(done[0])
        if verbose:
            say(f"[ple-adatt] gbdt {task}: {fitted[task]['rounds']} rounds ({len(fitted)}/{len(tasks)} tasks, "
                f"{fmt_duration(time.perf_counter() - t0)})")
    metrics = {k: v for t in tasks for k, v in fitted[t]["metrics"].items()}
    result = {"dataset": cfg.dataset.name, "model": "lightgbm", "params": {**LGBM_PARAMS, "max_rounds": MAX_ROUNDS,
              "early_stopping_rounds": EARLY_STOP}, "features": len(data["train"]["names"]),
              "tasks": {t: {"type": cfg.dataset.task(t).type, "rounds": fitted[t]["rounds"]} for t in tasks},
              "metrics": metrics}
    out = out_dir or baseline_dir(cfg)
    rows = [{"split": k.split("/")[0], "task": k.split("/")[1], "metric": k.split("/", 2)[2], "value": v}
            for k, v in sorted(metrics.items())]
    with tempfile.TemporaryDirectory(prefix="ple-adatt-gbdt-") as tmp:
        (Path(tmp) / "baseline.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        with open(Path(tmp) / "baseline.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["split", "task", "metric", "value"])
            w.writeheader()
            w.writerows(rows)
        st_out = out if storage.is_uri(out) else str(Path(out).resolve())
        storage.upload_dir(tmp, st_out)
        result["files"] = {"json": storage.join(st_out, "baseline.json"), "csv": storage.join(st_out, "baseline.csv")}
        if cfg.tracking.enabled:
            from ple_adatt.launch.fit import storage_dir

            uri = mt.resolve_tracking_uri(cfg.tracking.uri, storage_dir(cfg))
            run_id, _ = mt.start_run(uri, cfg.tracking.experiment or cfg.name, f"{cfg.run_name()}-gbdt",
                                     {f"lightgbm.{k}": v for k, v in result["params"].items()},
                                     tags={"dataset": cfg.dataset.name, "baseline": "lightgbm"})
            log = mt.RunLogger(uri, run_id)
            log.log_metrics(metrics, step=0)
            for f in ("baseline.json", "baseline.csv"):
                log.log_artifact(Path(tmp) / f)
            log.finish("FINISHED")
            result["mlflow_run_id"], result["tracking_uri"] = run_id, uri
    return result


def load_baseline(path: str) -> dict[str, float]:
    """A baseline.json (local or URI), or the folder holding it -> its flat metrics dict."""
    if not path.endswith(".json"):
        path = storage.join(path, "baseline.json")
    return json.loads(storage.read_text(path))["metrics"]


def comparison_lines(metrics: dict[str, float], baseline: dict[str, float], split: str) -> list[str]:
    """`evaluate` output with a GBDT column: metric, model, gbdt, model - gbdt (per-task metrics the
    baseline has; the last column's sign is the raw difference, see the metric's direction)."""
    lines = [f"{'metric':<40} {'model':>10} {'gbdt':>10} {'model-gbdt':>11}"]
    for k, v in sorted(metrics.items()):
        b = baseline.get(f"{split}/{k}")
        if isinstance(b, (int, float)) and math.isfinite(b) and not k.endswith("/n"):
            lines.append(f"{k:<40} {v:>10.6f} {b:>10.6f} {v - b:>+11.6f}")
        else:
            lines.append(f"{k:<40} {v:>10.6f}")
    return lines
