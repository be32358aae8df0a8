"""Training throughput: plain PyTorch vs Ray Train (1 and 2 workers, cached and streaming) vs Ray Data ingest, one run.

    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --epochs 3
The last line printed is one JSON object (automation reads it): the model's parameter counts, plain_samples_per_s,
ray1_samples_per_s, ray2_samples_per_s, ingest_rows_per_s (cached split), ray1_stream_samples_per_s and
ingest_stream_rows_per_s (streamed from parquet), the ratios (ratio_ray1_vs_plain, ratio_ray2_vs_plain,
ratio_ray1_stream_vs_plain, ratio_ingest_vs_consumption[_stream]), every epoch under per_epoch, peak RSS of the
driver, its process tree and the Ray workers (peak_rss_mb), niceness, and adaTT's step-time overhead
(affinity on parameters / expert heads / representation, grad_interval 1 and 10; --skip-adatt leaves it out).
Other modes, each printing one JSON line:
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --adatt-only    # no Ray
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --step-time     # looped vs stacked tasks, no Ray
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --auc-error     # histogram vs exact AUC, no Ray
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --device cuda   # GPU: bf16, pinned, prefetch
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml \
        --rows 100000=data/s100k/dataset.yaml,500000=data/s500k/dataset.yaml --workers 2     # scale: one streaming epoch each
"""
import json

from ple_adatt.cli import config_parser, fail, run_job
from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.data.files import DataError
from ple_adatt.launch import benchmark as bench


def _sizes(text: str) -> dict[int, str]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",")]
        return {int(rows): path for rows, path in pairs}
    except ValueError:
        raise SystemExit(f"--rows: expected ROWS=DATASET_YAML[,ROWS=DATASET_YAML], got {text!r}") from None


def main() -> None:
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per path; the first is warm-up")
    p.add_argument("--adatt-only", action="store_true", help="only the adaTT step-time overheads (no Ray)")
    p.add_argument("--skip-adatt", action="store_true", help="leave the adaTT overheads out of the full benchmark")
    p.add_argument("--step-time", action="store_true", help="step time with per-task layers looped vs stacked (no Ray)")
    p.add_argument("--auc-error", action="store_true", help="histogram vs exact AUC / PR-AUC on the val split (no Ray)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the GPU throughput mode")
    p.add_argument("--batch-size", type=int, default=8192, help="--device cuda: batch size")
    p.add_argument("--compile", action="store_true", help="--device cuda: torch.compile the model")
    p.add_argument("--rows", type=_sizes, default=None, help="scale mode: ROWS=DATASET_YAML pairs, comma-separated")
    p.add_argument("--workers", type=int, default=2, help="scale mode: Train workers")
    a = p.parse_args()
    uses_ray = not (a.adatt_only or a.step_time or a.auc_error or a.device == "cuda")
    try:
        if a.rows:
            result = bench.scale_benchmark(a.config, a.overrides, a.rows, workers=a.workers)
        else:
            cfg = load_config(a.config, a.overrides)
            if uses_ray:
                result = bench.run_benchmark(cfg, a.epochs, adatt=not a.skip_adatt)
            else:
                from ple_adatt.data.preprocess import fit_preprocessing

                state = fit_preprocessing(cfg.dataset)
                if a.device == "cuda":
                    result = bench.cuda_benchmark(cfg, state, batch_size=a.batch_size, compile=a.compile)
                elif a.step_time:
                    result = bench.step_time_modes(cfg, state)
                elif a.auc_error:
                    result = bench.histogram_auc_error(cfg, state)
                else:
                    result = bench.run_benchmark(cfg, a.epochs, only_adatt=True)
    except (ConfigError, DataError) as e:
        fail(e)
    if uses_ray and not a.rows:
        import ray

        ray.shutdown()  # flush and stop Ray's log streaming first: the JSON must be the last line
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run_job(main)
