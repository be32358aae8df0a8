"""Synthetic generator: layout, ground truth, knobs, determinism, memory bound, bad input."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.data import synthetic as S
from ple_adatt.data.synthetic_labels import GROUPS, TASKS, LabelModel, scalar_bases
from ple_adatt.data.synthetic_population import PROFILE, TABULAR

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"gmm_fit_rows": 2000, "calibration_rows": 4096}   # keeps each generation to ~1-2 s


def cfg(**kw) -> S.GeneratorConfig:
    return S.GeneratorConfig.model_validate(SMALL | kw)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    S.generate(cfg(), rows=6000, out_dir=out)
    return out


@pytest.fixture(scope="module")
def sample():
    """32k rows of features, labels and oracles straight from the generator (no files)."""
    gen = S._Generator(cfg(), seed=7, n_train=4000)
    parts = [gen.block(b, with_labels=True) for b in range(8)]
    f = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    y = {k: np.concatenate([p[1][0][k] for p in parts]) for k in parts[0][1][0]}
    o = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    return gen, f, y, o


def test_dataset_yaml_follows_the_spec_and_the_files(ds):
    spec = yaml.safe_load((ds / "dataset.yaml").read_text())
    DatasetSpec.model_validate(spec)       # the platform's own schema accepts it
    assert (ds / "dataset.yaml").read_text().startswith("# ")
    assert [t["name"] for t in spec["tasks"]] == [t[0] for t in TASKS] and len(TASKS) == 16
    assert {g: v["experts"] for g, v in spec["groups"].items()} == S.EXPERTS
    assert spec["groups"]["sequence"]["shape"] == [30, 4]
    sizes = {s: pq.read_metadata(next((ds / s).glob("*.parquet"))).num_rows for s in ("train", "val", "test")}
    assert sizes == {"train": 4800, "val": 600, "test": 600}
    t = pq.read_table(ds / "val")
    assert t.column("customer_id").to_pylist() == list(range(4800, 5400))
    assert t.schema.field("txn_seq").type == pa.list_(pa.float32(), 120)
    for col in spec["groups"]["tabular"]["columns"] + spec["groups"]["profile"]["columns"]:
        assert col in t.column_names
    for task in spec["tasks"]:
        assert task["label"] in t.column_names and task.get("oracle", task["label"]) in t.column_names
    hier = np.stack(t.column("hierarchy").to_numpy(zero_copy_only=False))
    assert np.linalg.norm(hier, axis=1).max() < 1.0
    post = np.stack(t.column("gmm_posterior").to_numpy(zero_copy_only=False))
    assert post.shape == (600, 20) and np.allclose(post.sum(1), 1, atol=1e-5)
    hmm = t.column("hmm_journey")
    assert 0 < hmm.null_count < 60 and all(len(v) == 16 for v in hmm.drop_null().to_pylist())
    assert 0 < t.column("y_ltv").null_count < 90 and t.column("y_ctr").null_count == 0


def test_oracles_are_functions_of_the_written_columns(ds):
    """Recomputing every oracle from the parquet feature columns alone reproduces the stored oracles."""
    t = pq.read_table(ds / "test")
    _, labels = S.build_label_model(cfg(), seed=42)
    o = labels.oracles(S.features_from_table(t, seq_days=30))
    for name, kind, *_ in TASKS:
        if kind == "contrastive":
            continue
        stored = t.column(f"oracle_{name}").to_numpy(zero_copy_only=False)
        stored = np.stack(stored) if stored.dtype == object else stored
        np.testing.assert_allclose(o[name], stored, rtol=1e-4, atol=1e-5, err_msg=name)


def test_base_rates_and_label_dependencies(sample):
    _, f, y, o = sample
    for task, rate in S.BaseRates().model_dump().items():
        assert abs(o[task].mean() - rate) < 0.2 * rate, task        # calibrated on another sample
        assert abs(y[task].mean() - rate) < 0.25 * rate, task
    assert not (y["cvr"] & ~y["ctr"]).any()                         # no conversion without a click
    assert y["retention"][y["churn"]].mean() < 0.15 < y["retention"][~y["churn"]].mean()
    # labels follow the oracle: binned mean label == binned mean oracle
    bins = np.quantile(o["churn"], np.linspace(0, 1, 6))
    idx = np.clip(np.searchsorted(bins, o["churn"]) - 1, 0, 4)
    for b in range(5):
        m = idx == b
        se = np.sqrt(o["churn"][m].mean() * (1 - o["churn"][m].mean()) / m.sum())
        assert abs(y["churn"][m].mean() - o["churn"][m].mean()) < 4 * se + 1e-3
    # multiclass labels follow their class probabilities (engagement chi-square style check)
    for task in ("life_stage", "nba", "spending_category"):
        freq = np.bincount(y[task], minlength=o[task].shape[1]) / len(y[task])
        assert np.abs(freq - o[task].mean(0)).max() < 0.015, task


def test_base_rate_knob_moves_the_rate():
    gen = S._Generator(cfg(base_rates={"churn": 0.13, "retention": 0.85}), seed=1, n_train=1000)
    o = gen.labels.oracles(gen.block(3)[0])
    assert abs(o["churn"].mean() - 0.13) < 0.02


def test_oracle_auc_matches_monte_carlo(ds):
    t = pq.read_table(ds / "train")
    spec = yaml.safe_load((ds / "dataset.yaml").read_text())
    m = S.oracle_metrics(t, spec)
    rng = np.random.default_rng(0)
    for task in ("ctr", "churn", "retention"):
        p = t.column(f"oracle_{task}").to_numpy().astype(float)
        ranks = rankdata(p)      # fixed scores: AUC of resampled labels via the rank-sum formula

        def auc(y):
            n1 = y.sum()
            return (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))

        mc = np.array([auc(rng.random(len(p)) < p) for _ in range(400)])
        assert auc(t.column(f"y_{task}").to_numpy().astype(bool)) == pytest.approx(roc_auc_score(t.column(f"y_{task}"), p))
        assert abs(m[task]["auc"] - mc.mean()) < 4 * mc.std() + 1e-3, (task, m[task]["auc"], mc.mean())
        assert 0.65 < m[task]["auc"] < 0.99
    # multiclass: accuracy of the oracle's argmax vs its expectation mean(max_k p_k)
    for task in ("life_stage", "timing", "nba"):
        p = np.stack(t.column(f"oracle_{task}").to_numpy(zero_copy_only=False))
        exp_acc = p.max(1).mean()
        se = np.sqrt(exp_acc * (1 - exp_acc) / len(p))
        assert abs(m[task]["accuracy"] - exp_acc) < 4 * se, task
    # regression: the residual variance equals the generator's noise variance
    assert abs(m["engagement"]["noise_var"] - 0.36) < 0.03
    assert abs(m["merchant_affinity"]["noise_var"] - 0.49) < 0.04


def test_oracle_metrics_by_hand():
    spec = {"tasks": [{"name": "b", "type": "binary", "label": "yb", "oracle": "ob"},
                      {"name": "m", "type": "multiclass", "num_classes": 2, "label": "ym", "oracle": "om"},
                      {"name": "r", "type": "regression", "label": "yr", "oracle": "or"},
                      {"name": "c", "type": "contrastive", "num_classes": 5, "label": "yc"}]}
    data = {"yb": [1, 0, 1, 0, None], "ob": [0.9, 0.2, 0.4, 0.6, 0.5],
            "ym": [0, 1, 1, 0, 1], "om": [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5], [0.1, 0.9]],
            "yr": [1.0, 2.0, None, 4.0, 0.0], "or": [1.5, 2.0, 9.0, 3.0, 0.0], "yc": [0, 1, 2, 3, 4]}
    m = S.oracle_metrics(data, spec)
    assert m["b"]["auc"] == pytest.approx(0.75)                   # pairs (0.9>0.2, 0.9>0.6, 0.4>0.2, 0.4<0.6)
    assert m["b"]["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
    assert m["m"]["accuracy"] == pytest.approx(4 / 5)            # row 2 is wrong; the tie in row 3 -> class 0
    assert m["m"]["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4, 0.5, 0.9])))
    assert m["r"]["noise_var"] == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    assert set(m) == {"b", "m", "r"}


def _logit(p):
    return np.log(p / (1 - p))


def test_task_correlation_knob(sample):
    """corr(anchor signal, task signal) == rho on held-out rows; the oracles move with it."""
    gen, f, _, _ = sample
    fit = {k: v[:16384] for k, v in f.items()}
    test = {k: v[16384:] for k, v in f.items()}
    corr = {}
    for rho in (-0.6, 0.0, 0.5, 0.95):
        lm = LabelModel.calibrate(fit, world=gen.world, rho={g: rho for g in GROUPS}, base_rates=S.BaseRates().model_dump(),
                                  signal_scale=1.0, noise_scale=1.0, n_brands=128)
        s = lm.signals(lm._standardise(scalar_bases(test, gen.world), test))
        assert abs(np.corrcoef(s["ctr"], s["engagement"])[0, 1] - rho) < 0.03
        assert abs(np.corrcoef(s["churn"], s["ltv"])[0, 1] - rho) < 0.03
        o = lm.oracles(test)
        corr[rho] = np.corrcoef(_logit(o["ctr"]), o["engagement"])[0, 1]
    assert corr[-0.6] < corr[0.0] < corr[0.5] < corr[0.95]           # the oracles follow the knob
    assert corr[-0.6] < -0.4 and corr[0.95] > 0.9


FEATURE_GROUPS = {"tabular": list(TABULAR), "profile": list(PROFILE), "sequence": ["txn_seq"],
                  "hierarchy": ["hierarchy"], "tda": ["tda"], "collaborative": ["collaborative"],
                  "hmm": ["hmm_journey", "hmm_lifecycle", "hmm_behavior", "hmm_journey_missing",
                          "hmm_lifecycle_missing", "hmm_behavior_missing"]}


@pytest.mark.parametrize("group,task", [("tabular", "life_stage"), ("profile", "channel"), ("sequence", "timing"),
                                        ("hierarchy", "spending_category"), ("tda", "consumption_cycle"),
                                        ("collaborative", "nba"), ("hmm", "churn")])
def test_each_feature_group_drives_a_task(sample, group, task):
    """Shuffling one group's columns across customers destroys most of that task's oracle."""
    gen, f, _, o = sample
    perm = np.random.default_rng(1).permutation(len(f["age"]))
    g = {k: (v[perm] if k in FEATURE_GROUPS[group] else v) for k, v in f.items()}
    o2 = gen.labels.oracles(g)
    a, b = o[task], o2[task]
    r = np.corrcoef(a.ravel(), b.ravel())[0, 1] if a.ndim == 2 else np.corrcoef(_logit(a), _logit(b))[0, 1]
    assert r < 0.8, (group, task, r)


def _read_all(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.rglob("*.parquet"))])


def test_deterministic_regardless_of_chunk_size(tmp_path, ds):
    c = cfg(shard_rows=1500)
    S.generate(c, rows=6000, out_dir=tmp_path / "a", chunk_rows=700)
    assert len(list((tmp_path / "a" / "train").glob("*.parquet"))) == 4            # 4800 rows / 1500 per shard
    for split in ("train", "val", "test"):
        assert _read_all(tmp_path / "a" / split).equals(_read_all(ds / split)), split
    row_groups = [pq.ParquetFile(p).metadata.row_group(i).num_rows for p in (tmp_path / "a").rglob("*.parquet")
                  for i in range(pq.ParquetFile(p).metadata.num_row_groups)]
    assert max(row_groups) <= 700
    other_seed = S._Generator(cfg(), seed=43, n_train=1000).block(1)[0]
    assert not np.array_equal(other_seed["txn_seq"], S._Generator(cfg(), seed=42, n_train=1000).block(1)[0]["txn_seq"])


# Starts worker processes (~3 s): it runs with the multi-process tier.
@pytest.mark.integration
def test_worker_processes_write_the_same_bytes(tmp_path, ds):
    S.generate(cfg(), rows=6000, out_dir=tmp_path / "w", workers=2)     # 2 spawned processes, 2 blocks
    for split in ("train", "val", "test"):
        assert _read_all(tmp_path / "w" / split).equals(_read_all(ds / split)), split


def test_writer_memory_is_bounded_by_chunk_rows(tmp_path, monkeypatch):
    """Whatever `rows` is, a writer never holds more than chunk_rows rows (plus one block) in memory."""
    most = {"rows": 0, "adds": 0}
    real_add = S._ShardWriter.add

    def add(self, t):
        most["rows"], most["adds"] = max(most["rows"], self.buffered + t.num_rows), most["adds"] + 1
        real_add(self, t)
        assert self.buffered < self.chunk_rows          # flushed as soon as the bound is reached

    monkeypatch.setattr(S._ShardWriter, "add", add)
    S.generate(cfg(gmm_fit_rows=1000), rows=3 * S.BLOCK_ROWS, out_dir=tmp_path / "m", chunk_rows=1000)
    assert most["adds"] >= 3 and most["rows"] < 1000 + S.BLOCK_ROWS


def test_bad_knobs_are_reported_with_their_keys():
    with pytest.raises(ValueError) as e:
        S.load_generator_config(ROOT / "configs/datasets/synthetic_financial.yaml",
                                ["base_rates.ctr=0", "base_rates.retention=1.2", "task_correlation.value=-1.5",
                                 "label_missing_rate.bogus=0.1", "gmm_componets=3"])
    msg = str(e.value)
    for key in ("base_rates.ctr", "base_rates.retention", "task_correlation.value", "bogus", "gmm_componets"):
        assert key in msg
    with pytest.raises(ValueError, match="cvr .* must be below ctr"):
        cfg(base_rates={"ctr": 0.02, "cvr": 0.03})
    with pytest.raises(ValueError, match=r"retention \(0.9\) must be below"):
        cfg(base_rates={"churn": 0.15, "retention": 0.9})
    with pytest.raises(ValueError, match="key.path=value"):
        S.load_generator_config(None, ["no_equals_sign"])


@pytest.mark.parametrize("rows", [0, -10, 2.5])
def test_rows_must_be_positive(tmp_path, rows):
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        S.generate(cfg(), rows=rows, out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_out_dir_guard_and_atomic_write(tmp_path, ds, monkeypatch):
    out = tmp_path / "d"
    c = cfg()
    S.generate(c, rows=3000, out_dir=out)
    stamp = (out / "dataset.yaml").stat().st_mtime_ns
    assert S.generate(c, rows=3000, out_dir=out) == out / "dataset.yaml"        # same dataset: kept as is
    assert (out / "dataset.yaml").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="different dataset"):
        S.generate(c, rows=4000, out_dir=out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds files"):
        S.generate(c, rows=3000, out_dir=other)
    # a failure midway leaves the previous dataset untouched and no temp folder behind
    calls = {"n": 0}
    real = S._Generator.table

    def flaky(self, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, b)

    monkeypatch.setattr(S._Generator, "table", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        S.generate(c, rows=5000, out_dir=out, overwrite=True)
    assert json.loads((out / "generator.json").read_text())["rows"] == 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "other"]
    monkeypatch.setattr(S._Generator, "table", real)
    S.generate(c, rows=5000, out_dir=out, overwrite=True)
    assert json.loads((out / "generator.json").read_text())["rows"] == 5000


def _run_job(monkeypatch, args: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["generate_data.py", *args])
    runpy.run_path(str(ROOT / "jobs/generate_data.py"), run_name="__main__")


def test_generate_job_cli(tmp_path, monkeypatch, capsys):
    base = ["--config", str(ROOT / "configs/datasets/synthetic_financial.yaml"), "--out", str(tmp_path / "j")]
    _run_job(monkeypatch, [*base, "--rows", "2500", "gmm_fit_rows=1000", "calibration_rows=4096"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "j" / "dataset.yaml").exists()
    with pytest.raises(SystemExit) as e:
        _run_job(monkeypatch, [*base, "--rows", "2500", "base_rates.churn=1.5", "--overwrite"])
    assert "base_rates.churn" in str(e.value.code)


def test_shipped_generator_yaml_is_valid_and_documented():
    path = ROOT / "configs/datasets/synthetic_financial.yaml"
    text = path.read_text()
    assert text.startswith("# ") and "jobs/generate_data.py" in text.split("\n", 3)[1]
    c = S.load_generator_config(path, ["task_correlation=-0.25"])
    assert c.task_correlation.model_dump() == {g: -0.25 for g in GROUPS}
    assert c.base_rates.ctr == 0.05 and c.gmm_components == 20 and c.seq_days == 30


def test_label_scarcity_masks_train_rows_only_and_changes_nothing_else(tmp_path, ds):
    c = cfg(label_scarcity={"task": "merchant_affinity", "label_fraction": 0.03})
    S.generate(c, rows=6000, out_dir=tmp_path / "scarce")
    train, full = _read_all(tmp_path / "scarce" / "train"), _read_all(ds / "train")
    labelled = train.column("y_merchant_affinity").drop_null()
    assert 0.02 < len(labelled) / train.num_rows < 0.04                    # 3 % of 4800 train rows kept
    kept = train.column("y_merchant_affinity").is_valid().to_numpy(zero_copy_only=False)
    assert np.array_equal(np.asarray(labelled), full.column("y_merchant_affinity").to_numpy()[kept])  # same draws
    assert train.drop(["y_merchant_affinity"]).equals(full.drop(["y_merchant_affinity"]))
    for split in ("val", "test"):                                           # fully labelled: measured on full splits
        assert _read_all(tmp_path / "scarce" / split).equals(_read_all(ds / split)), split


def test_label_scarcity_needs_a_task_sharing_an_anchor():
    with pytest.raises(ValueError, match="cannot be the label-scarce task.*valid: .*merchant_affinity"):
        cfg(label_scarcity={"task": "spending_bucket"})
    with pytest.raises(ValueError, match="label_fraction"):
        cfg(label_scarcity={"task": "cvr", "label_fraction": 0.0})
