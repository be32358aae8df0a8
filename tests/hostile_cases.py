"""Hostile and unlucky inputs walked through the job CLIs (issue 18): every case must end with its
exit code and a one-line `error:` message (no traceback), before Ray starts, losing nothing.

    python tests/hostile_cases.py            # every case as a subprocess; prints the markdown table
    python tests/hostile_cases.py --in-process   # the same through run_job(main) in one interpreter (fast)
tests/unit/test_hostile_inputs.py runs the same cases in-process (same `run_job(main)` entry, no
interpreter start per case) so the unit tier stays fast, and one of them as a subprocess.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import runpy
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from tiny_data import write_tiny_dataset  # noqa: E402

TINY = str(ROOT / "configs/smoke/tiny.yaml")
VALIDATE = ["-m", "ple_adatt.cli", "validate"]


@dataclass
class Case:
    issue: str
    name: str
    argv: list[str]              # after the interpreter: a jobs/*.py path or -m ple_adatt.cli ...
    code: int
    first_line: str              # the message's first line starts with this
    kept: list[Path] = field(default_factory=list)  # must still exist afterwards (nothing lost)
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards (payload marker)
    detail: str = ""             # the message also holds this (the key, column or file it names)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint(folder: Path, dataset: Path) -> Path:
    """A real (tiny, untrained) checkpoint written by train/checkpoint.save_checkpoint."""
    from ple_adatt.config.loading import load_config
    from ple_adatt.data.preprocess import fit_preprocessing, input_shapes
    from ple_adatt.train.build import build_model, build_weighting
    from ple_adatt.train.checkpoint import save_checkpoint
    from ple_adatt.train.trainable import phase_optimizer

    cfg = load_config(TINY, [f"dataset={dataset}"])
    state = fit_preprocessing(cfg.dataset)
    model = build_model(cfg, input_shapes(cfg.dataset, state), state.cluster_k)
    opt, sched = phase_optimizer(cfg, model, build_weighting(cfg), None, 1, 4)
    return save_checkpoint(folder, model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=0, history=[],
                           cfg=cfg, preprocess=state, extra={"weighting": {}, "phase": 1, "world_size": 1})


def _dataset_variant(src: Path, dst: Path, column: str, values) -> Path:
    """A copy of the tiny dataset whose train part-0 has `column` replaced by `values`."""
    shutil.copytree(src.parent, dst)
    f = dst / "train" / "part-0.parquet"
    t = pq.read_table(f)
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, values), f)
    return dst / "dataset.yaml"


def build_cases(tmp: Path) -> list[Case]:
    """Write every fixture under `tmp`; return the cases (in issue order, ours last)."""
    data = write_tiny_dataset(tmp / "tiny", rows=300)
    good = _checkpoint(tmp / "ckpt" / "epoch_0000", data)
    runs = tmp / "runs"
    base = ["jobs/train.py", "--config", TINY, f"dataset={data}", f"run.storage_path={runs}"]

    payload = tmp / "payload" / "epoch_0000"
    shutil.copytree(good, payload)
    buf = io.BytesIO()
    import torch

    torch.save({"model": {}, "extra": {"weighting": _Payload(tmp / "PAYLOAD_RAN")}}, buf, pickle_module=pickle)
    (payload / "state.pt").write_bytes(buf.getvalue())
    man = json.loads((payload / "manifest.json").read_text())
    man["files"]["state.pt"] = {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "bytes": len(buf.getvalue())}
    (payload / "manifest.json").write_text(json.dumps(man))

    halfdb = tmp / "halfdb"
    halfdb.mkdir()
    con = sqlite3.connect(halfdb / "mlflow.db")  # what a full disk left: some tables, no version
    con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE TABLE evaluation_datasets (dataset_uuid TEXT)")
    con.commit()
    con.close()

    ragged = _dataset_variant(data, tmp / "ragged", "seq", pa.array(
        [[0.5] * (9 if i == 3 else 10) for i in range(pq.read_metadata(data.parent / "train/part-0.parquet").num_rows)],
        pa.list_(pa.float32())))

    truncated = tmp / "truncated" / "epoch_0000"
    shutil.copytree(good, truncated)
    (truncated / "state.pt").write_bytes((good / "state.pt").read_bytes()[:1000])

    foreign = tmp / "foreign" / "epoch_0000"  # config.yaml of another experiment next to this state.pt
    shutil.copytree(good, foreign)
    other = yaml.safe_load((good / "config.yaml").read_text())
    other["model"]["expert_hidden"] = [24, 16]
    (foreign / "config.yaml").write_text(yaml.safe_dump(other))
    relaunch = runs / "smoke-tiny" / "epoch_0000"  # an existing run dir from the default model
    shutil.copytree(good, relaunch)

    n0 = pq.read_metadata(data.parent / "train/part-0.parquet").num_rows
    nan_data = _dataset_variant(data, tmp / "nan", "x1", pa.array(
        [float("nan") if i == 1 else (float("inf") if i == 2 else 1e300 if i == 5 else 0.1) for i in range(n0)], pa.float64()))

    not_gzip = tmp / "census.train.gz"
    not_gzip.write_text("this is not gzip\n")
    out_file = tmp / "out_is_a_file"
    out_file.write_text("keep me\n")

    old = tmp / "old" / "epoch_0000"
    old.mkdir(parents=True)
    torch.save({"model": {}, "epoch": 0}, old / "state.pt")
    killed = tmp / "killed" / "epoch_0001"
    shutil.copytree(good, killed)
    (killed / "manifest.json").unlink()

    ev = ["jobs/evaluate.py", "--data", "val", "--checkpoint"]
    return [
        Case("1", "pickled payload in state.pt -> evaluate", [*ev, str(payload)], 2,
             f"error: checkpoint {payload}: state.pt holds something other than tensors",
             kept=[payload / "state.pt"], absent=[tmp / "PAYLOAD_RAN"]),
        Case("2", "nearly full disk (run.min_free_mb above the free space)", [*base, "run.min_free_mb=1e12"], 2,
             "error: only ", kept=[relaunch]),
        Case("3", "half-built mlflow.db left by a full disk -> rerun", [*base, f"run.storage_path={halfdb}"], 2,
             f"error: the MLflow store {halfdb}/mlflow.db is incomplete", kept=[halfdb / "mlflow.db"]),
        Case("4", "train.lr=.inf", [*VALIDATE, TINY, "train.lr=.inf", "--no-data"], 2, "error: invalid config",
             detail="train.lr: Input should be a finite number"),
        Case("4", "train.lr=.inf (jobs/train.py)", [*base, "train.lr=.inf"], 2, "error: invalid config",
             detail="train.lr: Input should be a finite number"),
        Case("4", "tasks.click.weight=inf", [*VALIDATE, TINY, "tasks.click.weight=inf", "--no-data"], 2, "error: invalid config",
             detail="tasks.click.weight: Input should be a finite number"),
        Case("4", "tasks.click.focal_gamma=inf", [*VALIDATE, TINY, "tasks.click.focal_gamma=inf", "--no-data"], 2,
             "error: invalid config", detail="tasks.click.focal_gamma: Input should be a finite number"),
        Case("4", "train.weight_decay=.nan", [*VALIDATE, TINY, "train.weight_decay=.nan", "--no-data"], 2,
             "error: invalid config", detail="train.weight_decay: Input should be a finite number"),
        Case("5", "run.name=it's", [*VALIDATE, TINY, "run.name=it's", "--no-data"], 2, "error: invalid config",
             detail="run.name: Value error, \"it's\" is not a safe run name"),
        Case("5", "run.name=../../escape (jobs/train.py)", [*base, "run.name=../../escape"], 2, "error: invalid config",
             detail="run.name: Value error, '../../escape' is not a safe run name"),
        Case("6", "list column with a wrong length in one row", [*VALIDATE, TINY, f"dataset={ragged}"], 2,
             "error: dataset problems:", detail=f"{ragged.parent}/train/part-0.parquet: column 'seq' has 1 row(s) of length != 10"),
        Case("7", "train.checkpoint_metric=val/los", [*VALIDATE, TINY, "train.checkpoint_metric=val/los", "--no-data"], 2,
             "error: train.checkpoint_metric='val/los' is not a metric this config reports; close matches: val/loss"),
        Case("7", "train.checkpoint_metric=val/los (jobs/train.py)", [*base, "train.checkpoint_metric=val/los"], 2,
             "error: train.checkpoint_metric='val/los'"),
        Case("8", "truncated checkpoint -> evaluate", [*ev, str(truncated)], 2,
             f"error: checkpoint {truncated}: state.pt is truncated or altered"),
        Case("9", "checkpoint with another config's config.yaml -> evaluate", [*ev, str(foreign)], 2,
             f"error: checkpoint {foreign}: config.yaml is truncated or altered"),
        Case("9", "relaunch a run with another model -> train", [*base, "tracking.enabled=false",
                                                                  "model.expert_hidden=[24,16]"], 2,
             "error: run.name=smoke-tiny already has checkpoint", kept=[relaunch / "state.pt"]),
        Case("10", "evaluate --out into a missing folder", [*ev, str(good), "--out", str(tmp / "new/deeper/m.json")], 0,
             "", kept=[tmp / "new/deeper/m.json"]),
        Case("11", "census input that is not gzip", ["jobs/prepare_census.py", "--train", str(not_gzip), "--val",
                                                     str(not_gzip), "--out", str(tmp / "census")], 1,
             f"prepare_census: {not_gzip}: cannot be read as a gzip CSV"),
        Case("12", "generator --out that is a file", ["jobs/generate_data.py", "--config",
                                                      str(ROOT / "configs/datasets/synthetic_financial.yaml"),
                                                      "--rows", "100", "--out", str(out_file)], 1,
             f"generate_data: out folder {out_file} is an existing file", kept=[out_file]),
        Case("13", "NaN/inf/1e300 in a feature, dataset.nonfinite=error", [*base, f"dataset={nan_data}",
                                                                           "tracking.enabled=false", "dataset.nonfinite=error"], 2,
             "error: dataset problems:", detail="splits.train: column 'x1' has 3 non-finite value(s)"),
        Case("18.1", "old-format checkpoint (state.pt, no manifest) -> evaluate", [*ev, str(old)], 2,
             f"error: checkpoint {old} is in the old format"),
        Case("18.8", "checkpoint whose write was killed (no manifest) -> evaluate", [*ev, str(killed)], 2,
             f"error: checkpoint {killed} has no manifest.json: its write was interrupted"),
        Case("18.6", "evaluate --out that is a folder", [*ev, str(good), "--out", str(tmp)], 2,
             f"error: --out {tmp} is a folder"),
        Case("18.3", "train.lr=nan via YAML .nan", [*VALIDATE, TINY, "train.lr=.nan", "--no-data"], 2, "error: invalid config",
             detail="train.lr: Input should be a finite number"),
    ]


def run_case(case: Case, in_process: bool) -> tuple[int, str, str]:
    """(exit code, first stderr line starting with 'error:' or the job prefix, whole output)."""
    env_path = str(ROOT / "platform")
    if in_process:
        import ple_adatt.cli as cli

        argv = case.argv
        out, err = io.StringIO(), io.StringIO()
        saved = sys.argv
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if argv[0] == "-m":
                    sys.argv = ["ple-adatt", *argv[2:]]
                    cli.run_job(cli.main)
                else:
                    sys.argv = [argv[0], *argv[1:]]
                    ns = runpy.run_path(str(ROOT / argv[0]), run_name="not_main")
                    cli.run_job(ns["main"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=err)
            finally:
                sys.argv = saved
        text = err.getvalue() + out.getvalue()
    else:
        env = {**os.environ, "PYTHONPATH": env_path, "RAY_ADDRESS": ""}
        r = subprocess.run([sys.executable, *case.argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        code, text = r.returncode, r.stderr + r.stdout
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("[ple-adatt]", "20"))]
    first = next((ln for ln in lines if ln.startswith(("error:", "prepare_census:", "generate_data:"))), lines[0] if lines else "")
    return code, first, text


def check(case: Case, code: int, first: str, text: str) -> list[str]:
    """What is wrong with a case's outcome (empty: handled well)."""
    bad = []
    if code != case.code:
        bad.append(f"exit {code}, expected {case.code}")
    if case.first_line and not first.startswith(case.first_line):
        bad.append(f"first line {first!r}, expected it to start with {case.first_line!r}")
    if case.detail and case.detail not in text:
        bad.append(f"the message does not say {case.detail!r}")
    if "Traceback (most recent call last)" in text:
        bad.append("a traceback was printed")
    if "Started a local Ray instance" in text:
        bad.append("Ray was started")
    bad += [f"{p} was lost" for p in case.kept if not p.exists()]
    bad += [f"{p} exists (the payload ran)" for p in case.absent if p.exists()]
    return bad


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        cases = build_cases(Path(d))
        print("| # | case | command | exit | first line of the message | nothing lost / ok |")
        print("|---|---|---|---|---|---|")
        failures = 0
        for c in cases:
            code, first, text = run_case(c, in_process="--in-process" in sys.argv)
            bad = check(c, code, first, text)
            failures += bool(bad)
            cmd = " ".join(a.replace(d, "$TMP") for a in c.argv).replace(str(ROOT) + "/", "")
            shown = first + (" / " + next((ln.strip() for ln in text.splitlines() if c.detail in ln), "")
                             if c.detail else "")
            print(f"| {c.issue} | {c.name} | `{cmd}` | {code} | `{shown.replace(d, '$TMP')[:240]}` | "
                  f"{'ok' if not bad else '; '.join(bad).replace(d, '$TMP')} |", flush=True)
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
