"""YAML loading: `base:` inheritance, dotted CLI overrides, dataset references, one error list.

    cfg = load_config("configs/experiments/synthetic_ple.yaml", ["train.lr=3e-4", "model.arch=mmoe"])

Every problem (unknown key, wrong type, bad override, missing file) is collected and raised
together as one ConfigError whose lines start with the dotted key path.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.config.schema import ExperimentConfig

MAX_BASE_DEPTH = 8


class ConfigError(ValueError):
    """All problems of one config, one per line, each starting with its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """An experiment YAML as a plain dict, `base:` chain merged and `dataset:` refs inlined (unvalidated)."""
    return _load_with_bases(Path(path).resolve())


def _load_with_bases(path: Path, depth: int = 0) -> dict[str, Any]:
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return _resolve_dataset_ref(data, path.parent)
    if depth >= MAX_BASE_DEPTH:
        raise ConfigError(str(path), [f"base: chain deeper than {MAX_BASE_DEPTH} (a cycle?)"])
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError(str(path), [f"base: file not found: {base} (resolved to {base_path})"])
    return deep_merge(_load_with_bases(base_path, depth + 1), _resolve_dataset_ref(data, path.parent))


def _resolve_dataset_ref(data: dict, folder: Path) -> dict:
    """`dataset: some/dataset.yaml` (relative to the file that says it) is inlined, paths made absolute.

    A reference to a file that does not exist yet (generated data) stays an absolute path string:
    an override `dataset=...` may replace it; `validate` reports it if it is still missing.
    """
    ref = data.get("dataset")
    if isinstance(ref, str):
        data = dict(data)
        data["dataset"] = _dataset_value(folder / ref)
    return data


def _dataset_value(path: Path) -> dict | str:
    path = Path(path).resolve()
    return load_dataset_dict(path) if path.is_file() else str(path)


def load_dataset_dict(path: str | Path) -> dict[str, Any]:
    """A dataset YAML as a dict whose split paths are absolute (resolved against the YAML's folder)."""
    path = Path(path).resolve()
    data = read_yaml(path)
    splits = data.get("splits")
    if isinstance(splits, dict):
        data["splits"] = {k: _absolute(v, path.parent) for k, v in splits.items()}
    return data


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str(folder / value)
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    return value


def apply_overrides(data: dict, overrides: list[str], problems: list[str]) -> dict:
    """`a.b.c=value` sets a nested key; the value is parsed as YAML (numbers, bools, lists)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if item.startswith("-") or "=" not in item:
            problems.append(f"override '{item}': expected key.path=value (no --flags)")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        value = _numeric_string(value)
        if key == "dataset" and isinstance(value, str):
            value = _dataset_value(Path(value))
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                problems.append(f"{key}: cannot set inside '{p}', which is not a mapping")
                break
            node = node.setdefault(p, {})
        else:
            node[parts[-1]] = value
    return data


def _numeric_string(value: Any) -> Any:
    """PyYAML reads `3e-4` as a string (YAML 1.1); treat it as the float a user meant."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            return value
    return value


def format_validation_error(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        out.append(f"{loc or '<root>'}: {msg}")
    return out


_UNION_TAGS = {"numeric", "categorical", "list", "fixed", "uncertainty", "gradnorm", "dwa"}


def validate(data: dict, model: type[BaseModel] = ExperimentConfig, source: str = "<config>"):
    ds = data.get("dataset") if model is ExperimentConfig else None
    if isinstance(ds, str):  # a dataset reference whose file was never found
        raise ConfigError(source, [f"dataset: file not found: {ds} (generate or prepare the data first: "
                                   f"see the header of the config; or override dataset=<path to dataset.yaml>)"])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment YAML (with bases and dataset refs), apply overrides, validate strictly."""
    problems: list[str] = []
    data = _load_with_bases(Path(path).resolve())
    data = apply_overrides(data, list(overrides or []), problems)
    try:
        cfg = validate(data, ExperimentConfig, str(path))
    except ConfigError as e:
        problems += e.problems
        cfg = None
    if problems:
        raise ConfigError(str(path), problems)
    return cfg


def load_dataset(path: str | Path) -> DatasetSpec:
    return validate(load_dataset_dict(path), DatasetSpec, str(path))


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value}; lists are kept as values (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
