"""Command-line parsing shared by the jobs: `--config FILE [key.path=value ...]`.

    ple-adatt validate configs/experiments/synthetic_ple.yaml train.lr=3e-4

Everything is validated before Ray starts; errors print one per line with their key path and
the process exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

from ple_adatt.config.loading import ConfigError, load_config
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.data.files import DataError
from ple_adatt.train.metrics import check_checkpoint_metric


class _Verbose(argparse.Action):
    """--verbose: keep Ray's and MLflow's INFO lines (train/reporting.quiet_logs turns them off)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=False, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        import os

        from ple_adatt.train.reporting import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
        setattr(namespace, self.dest, True)


def config_parser(description: str, extra: list[tuple[str, str]] = ()) -> argparse.ArgumentParser:
    """``extra``: (flag, help) pairs of optional string flags a job adds (e.g. ("--out", "..."))."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="experiment YAML (may use `base:` and `dataset:` refs)")
    p.add_argument("--verbose", action=_Verbose, help="keep Ray's and MLflow's own INFO lines on the console")
    for flag, help_text in extra:
        p.add_argument(flag, default=None, help=help_text)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.arch=mmoe")
    return p


def fail(err: Exception | str) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
"""What a user's input (a config, a path, a file) raises: printed as one `error:` message, exit 2.
ConfigError, DataError, CheckpointError, StoreError and ResourceError are ValueErrors."""


def run_job(main) -> None:
    """Run a job's `main()`: a user error or a full disk exits 2 with one message, never a traceback
    (PLE_ADATT_TRACEBACK=1 shows the traceback as well, for debugging)."""
    from ple_adatt.tracking.store import disk_full_message

    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - classified below; anything else is re-raised as it is
        if os.environ.get("PLE_ADATT_TRACEBACK") == "1":
            traceback.print_exc()
        if isinstance(e, ValueError):  # our own messages (StoreError names the full disk's path)
            fail(e)
        msg = disk_full_message(e)
        if msg:
            fail(msg)
        if isinstance(e, USER_ERRORS):
            fail(e)
        raise


def parse_experiment(description: str, argv: list[str] | None = None,
                     extra: list[tuple[str, str]] = ()) -> tuple[ExperimentConfig, argparse.Namespace]:
    args = config_parser(description, extra).parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_checkpoint_metric(cfg)
        return cfg, args
    except (ConfigError, DataError, ValueError) as e:
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
        from ple_adatt.train.build import check_model_builds

        check_model_builds(cfg)  # e.g. ple_hetero with no expert receiving a feature group
        if not args.no_data:
            from ple_adatt.data.files import check_dataset

            from ple_adatt.data.quality import LIST_CHECK_ROWS, check_list_lengths

            splits = ("train", "val", "test") if cfg.dataset.splits.test is not None else ("train", "val")
            rows = check_dataset(cfg.dataset, splits, cfg.task_names())
            check_list_lengths(cfg.dataset, splits)
            print(f"dataset '{cfg.dataset.name}': {rows} (list lengths checked on the first "
                  f"{LIST_CHECK_ROWS} rows of each file)")
        check_checkpoint_metric(cfg)
    except (ConfigError, DataError, ValueError) as e:
        fail(e)
    print(f"ok: {args.config} ({cfg.name}, {len(cfg.task_names())} tasks, model {cfg.model.arch})")


if __name__ == "__main__":
    run_job(main)
