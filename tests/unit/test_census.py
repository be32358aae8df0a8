"""Census-Income prep on the carried fixture (300 train + 200 val raw rows cut from the UCI files)."""
from __future__ import annotations

import gzip
import runpy
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.data.census import COLUMNS, MONEY, NUMERIC, prepare_census, read_raw

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/census"
TRAIN, VAL = FIX / "census-income.train.gz", FIX / "census-income.val.gz"


def _raw_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def test_prepare_writes_parquet_and_a_valid_spec(tmp_path):
    path = prepare_census(TRAIN, VAL, out_dir=tmp_path / "c")
    spec = yaml.safe_load(path.read_text())
    DatasetSpec.model_validate(spec)
    assert [t["name"] for t in spec["tasks"]] == ["income", "marital"]
    assert set(spec["splits"]) == {"train", "val"}
    groups = spec["groups"]
    feats = groups["numeric"]["columns"] + groups["money"]["columns"] + groups["categorical"]["columns"]
    assert sorted(groups["numeric"]["columns"] + groups["money"]["columns"]) == sorted(NUMERIC)
    assert groups["money"]["log1p"] and set(groups["money"]["columns"]) == set(MONEY)
    assert len(feats) == 39 and len(set(feats)) == 39      # 40 features minus the marital label source
    assert groups["numeric_codes"]["kind"] == "categorical"
    assert groups["numeric_codes"]["columns"] == [f"{c}_code" for c in NUMERIC]
    assert not {"instance_weight", "income_50k", "marital_stat"} & set(feats)
    lines = _raw_lines(TRAIN)
    train = pq.read_table(tmp_path / "c" / "train.parquet").to_pandas()
    assert len(train) == len(lines) == 300 and len(pq.read_table(tmp_path / "c" / "val.parquet")) == 200
    assert set(feats) <= set(train.columns) and "instance_weight" in train.columns
    # labels match a direct count on the raw text
    assert train["y_income"].sum() == sum(line.rstrip().endswith("50000+.") for line in lines) == 12
    assert train["y_marital"].sum() == sum(", Never married," in line for line in lines) == 129
    assert train["age"].dtype == "float32" and train["education"].iloc[0] == "High school graduate"
    assert train["capital_gains_code"].dtype == "int64"
    assert (train["capital_gains_code"] == train["capital_gains"].round()).all()


def test_education_task_drops_its_source_columns(tmp_path):
    spec = yaml.safe_load(prepare_census(TRAIN, VAL, VAL, out_dir=tmp_path / "e", with_education=True).read_text())
    DatasetSpec.model_validate(spec)
    feats = [c for g in spec["groups"].values() for c in g["columns"]]
    assert len(feats) == 37 + len(NUMERIC) and "education" not in feats and "hs_college" not in feats
    assert [t["name"] for t in spec["tasks"]] == ["income", "marital", "education"] and "test" in spec["splits"]
    df = pq.read_table(tmp_path / "e" / "train.parquet").to_pandas()
    raw = read_raw(TRAIN)
    degree = raw["education"].str.contains("Bachelors|Masters|Prof school|Doctorate")
    assert (df["y_education"] == degree.astype("int8")).all() and df["y_education"].sum() > 0


def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_wrong_column_count(tmp_path):
    lines = _raw_lines(TRAIN)[:20]
    short = _write_gz(tmp_path / "short.gz", [line.rsplit(",", 1)[0] for line in lines])
    with pytest.raises(ValueError, match=r"short.gz: expected 42 comma-separated columns.*found 41"):
        read_raw(short)
    ragged = _write_gz(tmp_path / "ragged.gz", lines[:5] + [lines[5] + ", extra"] + lines[6:])
    with pytest.raises(ValueError, match="ragged.gz: expected 42 comma-separated columns in every row"):
        read_raw(ragged)


def test_unexpected_label_values(tmp_path):
    lines = _raw_lines(TRAIN)[:20]
    lines[3] = lines[3].replace("- 50000.", "maybe")
    with pytest.raises(ValueError, match=r"unexpected values in label column 'income_50k': \['maybe'\]"):
        read_raw(_write_gz(tmp_path / "bad.gz", lines))
    lines = _raw_lines(TRAIN)[:20]
    lines[2] = lines[2].replace("Never married", "Engaged")
    with pytest.raises(ValueError, match="'marital_stat'.*Engaged"):
        read_raw(_write_gz(tmp_path / "bad2.gz", lines))


def test_failed_prepare_leaves_nothing_and_existing_out_is_refused(tmp_path):
    lines = _raw_lines(VAL)
    lines[-1] = lines[-1].replace("- 50000.", "?")
    bad_val = _write_gz(tmp_path / "bad_val.gz", lines)
    with pytest.raises(ValueError, match="income_50k"):
        prepare_census(TRAIN, bad_val, out_dir=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_val.gz"]
    prepare_census(TRAIN, VAL, out_dir=tmp_path / "out")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_census(TRAIN, VAL, out_dir=tmp_path / "out")
    prepare_census(TRAIN, VAL, out_dir=tmp_path / "out", with_education=True, overwrite=True)
    assert "education" in (tmp_path / "out" / "dataset.yaml").read_text()


def test_prepare_job_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prepare_census.py", "--train", str(TRAIN), "--val", str(VAL),
                                      "--out", str(tmp_path / "j")])
    runpy.run_path(str(ROOT / "jobs/prepare_census.py"), run_name="__main__")
    assert "wrote" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["prepare_census.py", "--train", str(tmp_path / "nope.gz"), "--val", str(VAL),
                                      "--out", str(tmp_path / "k")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "jobs/prepare_census.py"), run_name="__main__")
    assert "census file not found" in str(e.value.code)


def test_column_names_match_the_readme():
    assert len(COLUMNS) == 42 and COLUMNS[24] == "instance_weight" and COLUMNS[-1] == "income_50k"
