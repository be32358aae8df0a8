"""Training throughput: plain PyTorch vs Ray Train (1 and 2 workers) vs Ray Data ingest, one run.

    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --epochs 3
The last line printed is one JSON object (automation reads it): the model's parameter counts, plain_samples_per_s,
ray1_samples_per_s, ray2_samples_per_s, ingest_rows_per_s, the three ratios, and adaTT's step-time
overhead (affinity on parameters / expert heads / representation, grad_interval 1 and 10).
    python jobs/benchmark.py --config configs/experiments/synthetic_ple.yaml --adatt-only   # no Ray
"""
import json

from ple_adatt.cli import config_parser, fail, run_job
from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.data.files import DataError
from ple_adatt.launch.benchmark import run_benchmark


def main() -> None:
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per path; the first is warm-up")
    p.add_argument("--adatt-only", action="store_true", help="only the adaTT step-time overheads (no Ray)")
    a = p.parse_args()
    try:
        cfg = load_config(a.config, a.overrides)
        result = run_benchmark(cfg, a.epochs, only_adatt=a.adatt_only)
    except (ConfigError, DataError) as e:
        fail(e)
    import ray

    ray.shutdown()  # flush and stop Ray's log streaming first: the JSON must be the last line
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run_job(main)
