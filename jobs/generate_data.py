"""Generate the synthetic financial customer dataset (parquet shards + dataset.yaml).

    python jobs/generate_data.py --config configs/datasets/synthetic_financial.yaml --rows 100000 --out data/synthetic
    python jobs/generate_data.py --config configs/datasets/synthetic_financial.yaml --rows 5000000 --out data/s5m --ray
    python jobs/generate_data.py --config configs/datasets/synthetic_financial.yaml --rows 20000 \
        --out data/syn_rho-0.5 task_correlation=-0.5 base_rates.ctr=0.04 --overwrite
Trailing key.path=value arguments override the generator YAML.
"""
import argparse
import sys

from ple_adatt.cli import run_job
from ple_adatt.data.synthetic import generate, load_generator_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="generator YAML (configs/datasets/synthetic_financial.yaml)")
    p.add_argument("--rows", type=int, required=True, help="total rows over train/val/test")
    p.add_argument("--out", required=True, help="output folder (gets train/ val/ test/ dataset.yaml)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows buffered per write (memory bound)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing blocks (same output for any value)")
    p.add_argument("--ray", action="store_true", help="generate chunks as Ray tasks that write their own files")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="with --ray: CPUs of the local Ray it starts (same files for any value)")
    p.add_argument("--overwrite", action="store_true", help="replace an out folder holding another dataset")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides of the generator config")
    a = p.parse_args()
    try:
        cfg = load_generator_config(a.config, a.overrides)
        if a.ray and a.num_cpus:
            import ray

            ray.init(num_cpus=a.num_cpus, log_to_driver=True)
        path = generate(cfg, a.rows, a.out, seed=a.seed, overwrite=a.overwrite, chunk_rows=a.chunk_rows,
                        workers=a.workers, ray_tasks=a.ray)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"generate_data: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_job(main)
