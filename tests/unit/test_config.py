from pathlib import Path

import pytest
import yaml

from ple_adatt.config.loading import ConfigError, apply_overrides, deep_merge, load_config, load_dataset

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs/smoke/tiny.yaml"


def test_smoke_config_loads_and_resolves_dataset_paths():
    cfg = load_config(SMOKE)
    assert cfg.model.arch == "ple"
    assert Path(cfg.dataset.splits.train).is_absolute()
    assert cfg.task_names() == ["click", "stage", "value"]
    assert cfg.task_loss("click") == "bce" and cfg.task_loss("stage") == "ce" and cfg.task_loss("value") == "mse"


def test_dotted_overrides_parse_yaml_values_and_scientific_notation():
    cfg = load_config(SMOKE, ["train.lr=3e-4", "model.expert_hidden=[8,4]", "tasks.click.loss=focal",
                              "tasks.click.focal_alpha=0.4"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.expert_hidden == [8, 4]
    assert cfg.task_loss("click") == "focal" and cfg.task_settings("click").focal_alpha == 0.4


def test_all_errors_reported_at_once_with_key_paths():
    with pytest.raises(ConfigError) as e:
        load_config(SMOKE, ["train.lrr=1", "model.arch=transformer", "train.epochs=zero", "--flag"])
    msg = str(e.value)
    assert "train.lrr: unknown key" in msg
    assert "model.arch:" in msg and "transformer" in msg and "'mmoe'" in msg
    assert "train.epochs:" in msg
    assert "override '--flag'" in msg
    assert len(e.value.problems) == 4


def test_task_override_must_name_a_dataset_task_and_fit_its_type():
    with pytest.raises(ConfigError) as e:
        load_config(SMOKE, ["tasks.clik.weight=2", "tasks.value.loss=bce"])
    msg = str(e.value)
    assert "tasks.clik: no such task" in msg
    assert "tasks.value.loss: 'bce' does not fit a regression task" in msg


def test_duplicate_task_names_rejected(tmp_path, tiny_dataset):
    spec = yaml.safe_load(tiny_dataset.read_text())
    spec["tasks"].append(dict(spec["tasks"][0]))
    p = tmp_path / "dup.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"duplicate task names \['click'\]"):
        load_dataset(p)


def test_base_inheritance_merges_and_child_wins(tmp_path):
    (tmp_path / "child.yaml").write_text(f"base: {SMOKE}\nname: child\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.name == "child" and cfg.train.epochs == 7 and cfg.train.batch_size == 128


def test_missing_base_and_missing_file_are_clear(tmp_path):
    (tmp_path / "c.yaml").write_text("base: nope.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="base: file not found: nope.yaml"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_deep_merge_and_override_helpers():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    problems = []
    assert apply_overrides({"a": 1}, ["a.b=2"], problems) == {"a": 1}
    assert "cannot set inside 'a'" in problems[0]


def test_gpu_fields_and_strictness():
    with pytest.raises(ConfigError, match="scaling.num_workers"):
        load_config(SMOKE, ["scaling.num_workers=0"])


def test_missing_generated_dataset_is_a_clear_error_and_an_override_replaces_it(tmp_path, tiny_dataset):
    (tmp_path / "exp.yaml").write_text(f"base: {SMOKE}\nname: x\ndataset: data/never_generated/dataset.yaml\n")
    with pytest.raises(ConfigError, match=r"dataset: file not found: .*never_generated/dataset.yaml \(generate"):
        load_config(tmp_path / "exp.yaml")
    assert load_config(tmp_path / "exp.yaml", [f"dataset={tiny_dataset}"]).dataset.name == "tiny"
