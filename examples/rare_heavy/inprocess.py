"""In-process twin of the issue-17 acceptance runs (no Ray, one process): the worker's own model build
(train-split priors), step, optimizer and schedule (train/step.py, train/trainable.py) over the train
split in memory, the worker's validation metrics, collapse flags and the GBDT reference's fit_one_task.

    PYTHONPATH=platform python examples/rare_heavy/inprocess.py examples/rare_heavy/experiment.yaml \
        dataset=data/rare100k/dataset_heavy.yaml [overrides, e.g. train.weight_decay=1000]
Prints one line per epoch (val metrics, flags), then the GBDT reference's val metrics.
"""
import math
import sys
import time

import torch

from ple_adatt.config.loading import load_config
from ple_adatt.data.files import parquet_dataset, split_files
from ple_adatt.data.preprocess import Packer, fit_preprocessing, input_shapes
from ple_adatt.data.targets import to_original_units
from ple_adatt.launch.baseline import feature_matrix, fit_one_task
from ple_adatt.launch.benchmark import load_train_tensors
from ple_adatt.launch.inference import to_tensors
from ple_adatt.train.build import build_adatt, build_model, build_weighting
from ple_adatt.train.evaluate import predict_batches
from ple_adatt.train.metrics import evaluate_predictions
from ple_adatt.train.monitor import collapsed_tasks, prediction_spreads
from ple_adatt.train.step import Trainer
from ple_adatt.train.trainable import TrainableSet, begin_epoch, phase_optimizer


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    torch.set_num_threads(1)
    spec, tasks = cfg.dataset, cfg.task_names()
    types = {t: spec.task(t).type for t in tasks}
    state = fit_preprocessing(spec)
    train = load_train_tensors(cfg, state)
    cols = list(dict.fromkeys(spec.input_columns() + [spec.task(t).label for t in tasks] + spec.oracle_columns()))
    val = to_tensors(Packer(spec, state, tasks, with_oracles=True)(
        parquet_dataset(split_files(spec, "val")).to_table(columns=cols)))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, input_shapes(spec, state), state.cluster_k, targets=state.targets)
    weighting, adatt = build_weighting(cfg), build_adatt(cfg)
    n, bs = len(train[f"label/{tasks[0]}"]), cfg.train.batch_size
    steps = math.ceil(n / bs)
    opt, sched = phase_optimizer(cfg, model, weighting, adatt, 1, steps)
    trainer = Trainer(cfg, model, model, weighting, adatt, opt, sched)
    trainable, phase, step = TrainableSet(model, lambda m: m), 1, 0
    for epoch in range(cfg.total_epochs()):
        phase, _ = begin_epoch(trainer, trainable, epoch, phase, steps)
        torch.manual_seed(cfg.train.seed + 1000 * (epoch + 1))
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(n).split(bs):
            trainer.step({k: v[idx] for k, v in train.items()}, step)
            step += 1
        preds = predict_batches(model, [val], tasks, torch.device("cpu"))
        m = {f"val/{k}": v for k, v in evaluate_predictions(types, to_original_units(preds, state.targets)).items()}
        m.update({f"val/{k}": v for k, v in prediction_spreads(types, preds).items()})
        shown = " ".join(f"{k[4:]}={m[k]:.4f}" for k in sorted(m) if k.rsplit("/", 1)[-1] in ("auc", "r2", "spread"))
        print(f"epoch {epoch + 1} ({time.perf_counter() - t0:.0f} s): {shown} collapsed={collapsed_tasks(types, m)}",
              flush=True)
    data = {s: feature_matrix(cfg, state, s) for s in ("train", "val")}
    for t in tasks:
        g = fit_one_task(t, types[t], spec.task(t).num_classes, data, cfg.train.seed)["metrics"]
        print(f"gbdt {t}: " + " ".join(f"{k[4:]}={v:.4f}" for k, v in sorted(g.items())
                                        if k.rsplit("/", 1)[-1] in ("auc", "r2", "rmse", "pr_auc")), flush=True)


if __name__ == "__main__":
    main()
