"""Command-line parsing shared by the jobs: `--config FILE [key.path=value ...]`.

    ple-adatt validate configs/experiments/synthetic_ple.yaml train.lr=3e-4

Everything is validated before Ray starts; errors print one per line with their key path and
the process exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import DataError


class _Verbose(argparse.Action):
    """--verbose: keep Ray's and MLflow's INFO lines (train/reporting.quiet_logs turns them off)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=False, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        import os

        from ple_adatt.train.reporting import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
        setattr(namespace, self.dest, True)


def config_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="experiment YAML (may use `base:` and `dataset:` refs)")
    p.add_argument("--verbose", action=_Verbose, help="keep Ray's and MLflow's own INFO lines on the console")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.arch=mmoe")
    return p


def fail(err: Exception) -> "NoReturn":  # noqa: F821
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


def parse_experiment(description: str, argv: list[str] | None = None) -> tuple[ExperimentConfig, argparse.Namespace]:
    args = config_parser(description).parse_args(argv)
    try:
        return load_config(args.config, args.overrides), args
    except (ConfigError, DataError) as e:
        fail(e)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ple-adatt")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate an experiment config (and its dataset files)")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--no-data", action="store_true", help="skip checking the parquet files")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if not args.no_data:
            from ple_adatt.data.files import check_dataset

            rows = check_dataset(cfg.dataset, ("train", "val"), cfg.task_names())
            print(f"dataset '{cfg.dataset.name}': {rows}")
    except (ConfigError, DataError) as e:
        fail(e)
    print(f"ok: {args.config} ({cfg.name}, {len(cfg.task_names())} tasks, model {cfg.model.arch})")


if __name__ == "__main__":
    main()
