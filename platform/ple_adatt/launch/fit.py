"""Driver side of one training run: validate data, fit preprocessing, build the Ray Data
pipelines and the TorchTrainer, track in MLflow. Tune trials and ablation runs call `fit` too.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ple_adatt.config import storage as st
from ple_adatt.config.loading import config_to_yaml, flatten
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import check_dataset
from ple_adatt.data.preprocess import Packer, PreprocessState, fit_preprocessing
from ple_adatt.data.quality import FeatureReport, check_list_lengths, feature_report
from ple_adatt.data.reading import read_split
from ple_adatt.data.targets import rare_task_advice
from ple_adatt.tracking import mlflow_tracking as mt
from ple_adatt.tracking.lineage import git_tags
from ple_adatt.tracking.store import check_free_space, loopback_tracking_problem
from ple_adatt.train.build import check_model_builds
from ple_adatt.train.checkpoint import check_resumable
from ple_adatt.train.loop import train_loop_per_worker
from ple_adatt.train.metrics import check_checkpoint_metric
from ple_adatt.train.monitor import flagged_from_metrics
from ple_adatt.train.reporting import quiet_logs


class ResourceError(ValueError):
    pass


@dataclass
class FitResult:
    metrics: dict[str, Any]
    checkpoint_path: str | None
    best_checkpoint_path: str | None
    run_dir: str
    tracking_uri: str | None
    mlflow_run_id: str | None
    model_uri: str | None = None
    """The run's MLflow pyfunc model once logged (jobs/train.py, launch/model_export.py)."""


def ensure_ray(min_cpus: float = 0) -> None:
    """Join the cluster in RAY_ADDRESS (ray job submit) or a running local one; else start one.

    A locally started Ray gets at least `min_cpus` logical CPUs: on a 2-core laptop two train
    workers would otherwise take every CPU and starve the Ray Data tasks that feed them (a hang).
    """
    quiet_logs()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    quiet_data_progress()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    try:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(math.ceil(min_cpus))), log_to_driver=True)
    except ValueError:  # a cluster started with `ray start --head` here: join it as it is
        ray.init(log_to_driver=True)


def local_cpus_needed(cfg: ExperimentConfig) -> float:
    """Train workers (the most an elastic run grows to) + one for Ray Data + one for the Train
    controller/driver side."""
    return cfg.scaling.max_workers * cfg.scaling.cpus_per_worker + 2


def quiet_data_progress() -> None:
    """Ray Data's per-operator progress bars flood job logs; our loop prints one line per epoch."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Deterministic block order everywhere (materialised splits too), so a run and its resumed or
    # repeated twin see the same rows in the same order.
    ctx.execution_options.preserve_order = True


def check_resources(cfg: ExperimentConfig) -> None:
    """Fail before any worker starts if the cluster can never host the run. An elastic run needs
    room for its `min` workers only: it starts with those and grows as nodes join."""
    total = ray.cluster_resources()
    s = cfg.scaling
    if s.use_gpu:
        need = s.min_workers * s.gpus_per_worker
        if total.get("GPU", 0) < need:
            raise ResourceError(f"scaling.use_gpu=true needs {need:g} GPU(s) but the Ray cluster has "
                                f"{total.get('GPU', 0):g}; set scaling.use_gpu=false or add GPU nodes")
    need_cpu = s.min_workers * s.cpus_per_worker
    if total.get("CPU", 0) < need_cpu:
        raise ResourceError(f"scaling.num_workers={_fmt_workers(s.num_workers)} x "
                            f"scaling.cpus_per_worker={s.cpus_per_worker:g} "
                            f"needs {need_cpu:g} CPUs but the Ray cluster has {total.get('CPU', 0):g}; "
                            f"lower them (fractions are fine: scaling.cpus_per_worker=0.5)")


def _fmt_workers(n: int | tuple[int, int]) -> str:
    return str(n) if isinstance(n, int) else f"[{n[0]}, {n[1]}] (min {n[0]})"


def build_datasets(cfg: ExperimentConfig, state: PreprocessState, splits=("train", "val")) -> dict[str, ray.data.Dataset]:
    """Lazy Ray Data pipelines: read_parquet -> select_columns -> map_batches(pack)."""
    spec, tasks = cfg.dataset, cfg.task_names()
    quiet_data_progress()
    out = {}
    for split in splits:
        with_oracles = split != "train"
        cols = spec.input_columns() + [spec.task(t).label for t in tasks]
        if with_oracles:
            cols += [spec.task(t).oracle for t in tasks if spec.task(t).oracle]
        ds = read_split(spec, split, list(dict.fromkeys(cols)))
        out[split] = ds.map_batches(Packer(spec, state, tasks, with_oracles=with_oracles),
                                    batch_format="pyarrow", batch_size=4096, zero_copy_batch=True)
    return out


def _maybe_cached(cfg: ExperimentConfig, datasets: dict, state: PreprocessState, rows: dict[str, int],
                  verbose: bool = True) -> dict:
    """Per-epoch streaming re-executes the pipeline (seconds of fixed cost on small machines);
    small splits can be packed once into the object store instead (train.cache_*; "auto" decides
    from the split's size and the object store: launch/caching.py), and the choice is logged."""
    from ple_adatt.launch.caching import cache_plan

    plan = cache_plan(cfg, state, rows, ray.cluster_resources().get("object_store_memory", 0.0))
    if verbose:
        for split, (cache, why) in plan.items():
            print(f"[ple-adatt] {split} split: {'cached in the object store' if cache else 'streamed every epoch'} "
                  f"({why})", flush=True)
    return {k: ds.materialize() if plan[k][0] else ds for k, ds in datasets.items()}


def storage_dir(cfg: ExperimentConfig) -> str:
    """run.storage_path for Ray and our files: a URI as written, a local path absolute (config/storage.py)."""
    return st.storage_root(cfg.run.storage_path)


def checkpoint_uri(storage: str, name: str, checkpoint) -> str | None:
    """A Ray checkpoint's folder spelt like the storage path (Ray's `Checkpoint.path` drops the
    URI scheme: `bucket/prefix/run/epoch_0002`), so evaluate/predict can open it anywhere."""
    return st.join(storage, name, Path(checkpoint.path).name) if checkpoint is not None else None


def fit(cfg: ExperimentConfig, *, run_name: str | None = None, callbacks: list | None = None,
        parent_run_id: str | None = None, verbose: bool = True, fail_run_on_error: bool = True) -> FitResult:
    """Train one experiment with Ray Train. Relaunching with the same run name resumes it.

    fail_run_on_error=False leaves the MLflow run's status to the caller: a Tune trial's run is ended
    by the driver's RunCloser, and a trial Tune stops at max_t makes trainer.fit() raise here while
    its controller is torn down, which must not overwrite the closer's FINISHED."""
    # Where results go is checked first: a relative path inside a Ray job, or remote storage
    # without a tracking server, fails before any data is read.
    storage = storage_dir(cfg)
    check_free_space(storage, cfg.run.min_free_mb)  # a full disk: one clear error, before anything is written
    uri = mt.resolve_tracking_uri(cfg.tracking.uri, storage) if cfg.tracking.enabled else None
    check_checkpoint_metric(cfg)
    rows = check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())  # before any worker starts
    check_list_lengths(cfg.dataset, ("train", "val"))
    quality = FeatureReport()
    state = fit_preprocessing(cfg.dataset, report=quality)  # one scan of train: statistics and its quality counts
    model = check_model_builds(cfg, state)  # a config the workers could not build fails here, before Ray
    feature_report(cfg.dataset, state, ("train", "val"), quality)  # val's scan; raises under dataset.nonfinite=error
    for line in quality.lines() if verbose else []:
        print(f"[ple-adatt] {line}", flush=True)
    if verbose:
        for line in rare_task_advice(state.targets, {t: cfg.task_loss(t) for t in cfg.task_names()},
                                     {t: cfg.task_settings(t).pos_weight for t in cfg.task_names()}):
            print(f"[ple-adatt] {line}", flush=True)
    name = run_name or cfg.run_name()
    check_resumable(st.join(storage, name), cfg, model)  # a relaunch onto another model's checkpoints
    ensure_ray(local_cpus_needed(cfg))
    check_resources(cfg)
    if problem := loopback_tracking_problem(uri, {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]},
                                            ray.util.get_node_ip_address()):
        raise ResourceError(problem)

    run_id = None
    if cfg.tracking.enabled:
        run_id, resumed = mt.start_run(uri, cfg.tracking.experiment or cfg.name, name,
                                       {**flatten(cfg.model_dump(mode="json", exclude={"dataset"})), **quality.params()},
                                       parent_run_id=parent_run_id, tags={"dataset": cfg.dataset.name, **git_tags()})
        if not resumed:
            _log_inputs(cfg, uri, run_id, rows)
        if verbose:
            print(f"[ple-adatt] MLflow run {run_id} ({'resumed' if resumed else 'new'}) at {uri}", flush=True)

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    exec_opts = ray.data.ExecutionOptions(preserve_order=True)  # deterministic block order -> reproducible shards
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "preprocess": state.to_dict(),
                           "train_rows": rows["train"], "tracking_uri": uri, "mlflow_run_id": run_id},
        torch_config=TorchConfig(timeout_s=600),
        # a (min, max) tuple makes the run elastic
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures,
                                         controller_failure_limit=cfg.run.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep,
                                               checkpoint_score_attribute=cfg.train.checkpoint_metric,
                                               checkpoint_score_order=cfg.train.checkpoint_mode),
            callbacks=list(callbacks or []),
            logging_config=LoggingConfig(log_level="WARNING")),  # our loop prints one line per epoch
        datasets=_maybe_cached(cfg, build_datasets(cfg, state), state, rows, verbose),
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=exec_opts, enable_shard_locality=False),
    )
    try:
        result = trainer.fit()
    except Exception:  # noqa: BLE001 - recorded in MLflow, then re-raised
        if run_id and fail_run_on_error:
            mt.RunLogger(uri, run_id).finish("FAILED")
        raise
    metrics = dict(result.metrics or {})
    ckpt = checkpoint_uri(storage, name, result.checkpoint)
    best = None
    if result.best_checkpoints:
        best = checkpoint_uri(storage, name, result.get_best_checkpoint(cfg.train.checkpoint_metric,
                                                                        cfg.train.checkpoint_mode))
    out = FitResult(metrics, ckpt, best, st.join(storage, name), uri, run_id)
    if run_id:
        _log_final(cfg, out)
    return out


def _log_inputs(cfg: ExperimentConfig, uri: str, run_id: str, rows: dict[str, int]) -> None:
    """The train and val splits as the run's MLflow dataset inputs (files, schema, rows, digest)."""
    from ple_adatt.data.files import parquet_dataset, split_files
    from ple_adatt.tracking.lineage import log_dataset_inputs

    splits = {}
    for split, n in rows.items():
        files = split_files(cfg.dataset, split)
        splits[split] = (files, parquet_dataset(files).schema, n)
    log_dataset_inputs(uri, run_id, cfg.dataset.name, splits)


def _log_final(cfg: ExperimentConfig, res: FitResult) -> None:
    """The run's summary files, next to its checkpoints (any storage) and in MLflow."""
    log = mt.RunLogger(res.tracking_uri, res.mlflow_run_id)
    files = {"resolved_config.yaml": config_to_yaml(cfg),
             "final_metrics.json": json.dumps(res.metrics, indent=2, sort_keys=True),
             "best_checkpoint.json": json.dumps({"best": res.best_checkpoint_path, "latest": res.checkpoint_path}, indent=2)}
    with tempfile.TemporaryDirectory(prefix="ple-adatt-") as tmp:
        for f, text in files.items():
            (Path(tmp) / f).write_text(text)
            log.log_artifact(Path(tmp) / f)
        st.upload_dir(tmp, res.run_dir)
    log.set_tag("best_checkpoint", str(res.best_checkpoint_path))
    log.set_tag("collapsed_tasks", ",".join(flagged_from_metrics(res.metrics)) or "none")
    log.finish("FINISHED")
