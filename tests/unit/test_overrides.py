"""The one override engine (config/paths.py): the same dotted paths mean the same thing on the command
line, in tune search spaces and in ablation variants; per-arch model sections; paths and URIs."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from ple_adatt.config.loading import ConfigError, load_config, load_dataset_dict
from ple_adatt.config.paths import ConfigNote, get_path, resolve_dataset_overrides, resolve_path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/smoke/tiny.yaml"
# tiny.yaml as a ple_hetero model with one logit-transfer edge (what the list-index paths point into)
HETERO = {"base": str(TINY), "name": "hetero-tiny",
          "model": {"arch": "ple_hetero", "experts": {"use": ["mlp"]}, "tower_hidden": [16],
                    "logit_transfer": {"enabled": True, "edges": [{"source": "click", "target": "value"}]}}}

# (dotted path, as typed on the command line, as a Python value in a search space)
EDGE_AND_FRIENDS = [("model.logit_transfer.edges.0.strength", "0.3", 0.3), ("model.gate.kind", "layer", "layer"),
                    ("train.lr", "3e-4", 3e-4)]
ARCH_SWITCH = [("model.arch", "mmoe", "mmoe"), ("model.num_experts", "3", 3)]


def _write(path: Path, data: dict) -> Path:
    path.write_text("# test config\n" + yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("values", [EDGE_AND_FRIENDS, ARCH_SWITCH], ids=["list-index", "arch-switch"])
def test_same_dotted_paths_through_cli_tune_and_ablation(tmp_path, tiny_dataset, values):
    from ple_adatt.launch.ablate import prepare_study
    from ple_adatt.launch.trial import TrialSpec, build_trial_config
    from ple_adatt.launch.tune import prepare_campaign

    exp = _write(tmp_path / "hetero.yaml", HETERO)
    data = f"dataset={tiny_dataset}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigNote)
        # (a) command line
        cli = load_config(exp, [data] + [f"{k}={s}" for k, s, _ in values])
        # (b) a tune search space (one-choice categoricals, so the trial is known), then a trial's config
        space = {k: {"type": "categorical", "choices": [v]} for k, _, v in values}
        if "model.num_experts" in space:
            space["model.num_experts"]["when"] = {"model.arch": "mmoe"}
        campaign = prepare_campaign(_write(tmp_path / "camp.yaml", {
            "name": "c", "base": "hetero.yaml", "overrides": [data], "search_space": space,
            "budget": {"num_trials": 1}, "objective": {"metric": "val/loss"}}))
        tuned, _ = build_trial_config(TrialSpec(name="c", base=campaign.base, train_storage=str(tmp_path)),
                                      {k: v for k, _, v in values})
        # (c) an ablation variant
        study = prepare_study(_write(tmp_path / "study.yaml", {
            "name": "s", "base": "hetero.yaml", "overrides": [data], "baseline": "base", "seeds": [0, 1],
            "variants": {"base": [], "changed": [f"{k}={s}" for k, s, _ in values]}}))
    ablated = study.run_cfgs[("changed", None)]
    for k, _, v in values:
        got = [get_path(c.model_dump(mode="json"), k) for c in (cli, tuned, ablated)]
        assert got == [v, v, v], k
    assert cli.model == tuned.model == ablated.model
    assert cli.model != study.run_cfgs[("base", None)].model


def test_cli_accepts_list_indices_and_names_the_list_length(tiny_dataset, tmp_path):
    exp = _write(tmp_path / "hetero.yaml", HETERO)
    cfg = load_config(exp, [f"dataset={tiny_dataset}", "model.logit_transfer.edges.0.strength=0.3"])
    assert cfg.model.logit_transfer.edges[0].strength == 0.3
    with pytest.raises(ConfigError, match=r"model.logit_transfer.edges.3.strength: '3' is not an index of the "
                                          r"1-item list at 'model.logit_transfer.edges'"):
        load_config(exp, [f"dataset={tiny_dataset}", "model.logit_transfer.edges.3.strength=0.3"])
    with pytest.raises(ConfigError, match=r"train.lr.x: cannot set inside 'train.lr', which is float"):
        load_config(exp, [f"dataset={tiny_dataset}", "train.lr.x=1"])


def test_fields_of_another_arch_are_errors_naming_field_and_arch(tiny_dataset):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [f"dataset={tiny_dataset}", "model.arch=mmoe", "model.gate.kind=layer",
                           "model.num_task_experts=4"])
    msg = str(e.value)
    assert "model.gate: unknown key for model.arch=mmoe (valid keys: arch, tower_hidden, dropout" in msg
    assert "model.num_task_experts: unknown key for model.arch=mmoe" in msg and "num_experts" in msg
    with pytest.raises(ConfigError, match=r"model.arch: 'moe' is not one of \['shared_bottom'"):
        load_config(TINY, [f"dataset={tiny_dataset}", "model.arch=moe"])
    with pytest.raises(ConfigError, match=r"model.num_experts: unknown key for model.arch=ple"):
        load_config(TINY, [f"dataset={tiny_dataset}", "model.num_experts=3"])  # no arch given: ple
    with pytest.raises(ConfigError, match=r"model.gate.bogus: unknown key \(not in the schema\)"):
        load_config(TINY, [f"dataset={tiny_dataset}", "model.arch=ple_hetero", "model.gate.bogus=1"])


def test_arch_switch_drops_the_bases_foreign_fields_and_says_so(tiny_dataset, tmp_path):
    exp = _write(tmp_path / "hetero.yaml", HETERO)
    with pytest.warns(ConfigNote, match=r"model.arch=mmoe \(was ple_hetero\): dropped model.experts, "
                                        r"model.logit_transfer from the base config"):
        cfg = load_config(exp, [f"dataset={tiny_dataset}", "model.arch=mmoe"])
    assert cfg.model.arch == "mmoe" and cfg.model.tower_hidden == [16]  # fields mmoe has are kept
    # A value given alongside the switch is never dropped, whatever the order: it is validated.
    with pytest.raises(ConfigError, match="model.gate: unknown key for model.arch=mmoe"):
        load_config(exp, [f"dataset={tiny_dataset}", "model.gate.kind=layer", "model.arch=mmoe"])
    # The same rule for `base:` inheritance: a child YAML that switches arch.
    child = _write(tmp_path / "child.yaml", {"base": "hetero.yaml", "model": {"arch": "ple", "num_levels": 2}})
    with pytest.warns(ConfigNote, match="model.arch=ple"):
        cfg = load_config(child, [f"dataset={tiny_dataset}"])
    assert (cfg.model.arch, cfg.model.num_levels, cfg.model.tower_hidden) == ("ple", 2, [16])
    # Setting the arch the base already has drops nothing.
    cfg = load_config(exp, [f"dataset={tiny_dataset}", "model.arch=ple_hetero"])
    assert cfg.model.experts.use == ["mlp"] and cfg.model.logit_transfer.edges[0].source == "click"


def test_uris_are_never_resolved_as_local_paths(tmp_path):
    assert resolve_path("s3://bucket/train/", "/data") == "s3://bucket/train/"
    assert resolve_path(["gs://b/x.parquet", "part/*.parquet"], "/data") == ["gs://b/x.parquet", "/data/part/*.parquet"]
    assert resolve_path("/abs/x", "/data") == "/abs/x" and resolve_path("../x", "/data/ds") == "/data/x"
    assert resolve_dataset_overrides(["dataset=s3://b/ds.yaml", "dataset=d/ds.yaml", "train.lr=1"], "/cfg") == [
        "dataset=s3://b/ds.yaml", "dataset=/cfg/d/ds.yaml", "train.lr=1"]
    ds = tmp_path / "ds.yaml"
    ds.write_text(yaml.safe_dump({"name": "x", "splits": {"train": "s3://bucket/train/", "val": "val"}}))
    assert load_dataset_dict(ds)["splits"] == {"train": "s3://bucket/train/", "val": str(tmp_path / "val")}
    # A relative split of a dataset YAML read from a URI is joined to that URI's folder
    # (reading from a bucket: tests/unit/test_storage.py).
    assert resolve_path("../val", "s3://bucket/data/ds") == "s3://bucket/data/val"


def test_generator_overrides_use_the_same_engine():
    from ple_adatt.data.synthetic import load_generator_config

    gen = ROOT / "configs/datasets/synthetic_financial.yaml"
    assert load_generator_config(gen, ["signal_scale=3e-1"]).signal_scale == 0.3  # the 3e-4 float fix
    with pytest.raises(ConfigError) as e:
        load_generator_config(gen, ["--rows", "signal_scale.x=1", "gmm_componets=3"])
    assert e.value.problems[:2] == ["override '--rows': expected key.path=value (no --flags)",
                                    "signal_scale.x: cannot set inside 'signal_scale', which is float 1.0, "
                                    "not a mapping or list"]
    assert "gmm_componets: unknown key (not in the schema)" in e.value.problems
