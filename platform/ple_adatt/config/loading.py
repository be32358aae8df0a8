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
# ConfigError, read_yaml, apply_overrides and load_dataset_dict are re-exported for callers.
from ple_adatt.config.paths import (  # noqa: F401
    SWITCHES,
    ConfigError,
    apply_overrides,
    dataset_value,
    get_path,
    load_dataset_dict,
    read_yaml,
    resolve_path,
    switch_section,
)
from ple_adatt.config.schema import MODEL_ARCHS, WEIGHTINGS, ExperimentConfig

MAX_BASE_DEPTH = 8


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; any other value (lists included) replaces the base value.
    A child that switches `model.arch` first drops the base's fields the new arch lacks (paths.switch_section)."""
    for tag_path in SWITCHES:
        new = get_path(over, tag_path, None)
        if new is not None:
            base = switch_section(base, tag_path, new)
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
    if isinstance(data.get("dataset"), str):  # relative to the file that says it
        data["dataset"] = dataset_value(data["dataset"], path.parent)
    if base is None:
        return data
    if depth >= MAX_BASE_DEPTH:
        raise ConfigError(str(path), [f"base: chain deeper than {MAX_BASE_DEPTH} (a cycle?)"])
    base_path = Path(resolve_path(base, path.parent))
    if not base_path.is_file():
        raise ConfigError(str(path), [f"base: file not found: {base} (resolved to {base_path})"])
    return deep_merge(_load_with_bases(base_path, depth + 1), data)


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per error: the dotted key path (union tags left out), then what was expected.
    An unknown key directly in a tagged section names the variant and its keys:
    `model.gate: unknown key for model.arch=mmoe (valid keys: ...)`."""
    out = []
    for e in err.errors():
        parts, tagged = _strip_union_tags(e["loc"])
        loc = ".".join(parts)
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and tagged and len(parts) == tagged[0] + 1:
            _, section, field, tag = tagged
            msg = (f"unknown key for {section}.{field}={tag} "
                   f"(valid keys: {', '.join(_UNION_SECTIONS[section][1][tag].model_fields)})")
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        elif e["type"] == "union_tag_invalid" and parts and parts[-1] in _UNION_SECTIONS:
            field, classes = _UNION_SECTIONS[parts[-1]]
            loc, msg = f"{loc}.{field}", f"{e['ctx']['tag']!r} is not one of {list(classes)}"
        elif e["type"] == "union_tag_not_found" and parts and parts[-1] in _UNION_SECTIONS:
            field, classes = _UNION_SECTIONS[parts[-1]]
            got = e["input"].get(field) if isinstance(e.get("input"), dict) else e.get("input")
            msg = f"expected a mapping whose {field} is one of {list(classes)}, got {got!r}"
        out.append(f"{loc or '<root>'}: {msg}")
    return out


# Top-level tagged unions: section -> (tag field, tag -> class); feature groups are tagged by `kind`.
_UNION_SECTIONS = {"model": ("arch", MODEL_ARCHS), "loss_weighting": ("name", WEIGHTINGS)}
_GROUP_KINDS = {"numeric", "categorical", "list"}


def _strip_union_tags(loc: tuple) -> tuple[list[str], tuple[int, str, str, str] | None]:
    """pydantic puts the chosen variant into the location (`model.mmoe.gate`): drop it, and return
    (position of the section, section, tag field, tag) for the message."""
    parts: list[str] = []
    tagged = None
    for i, p in enumerate(map(str, loc)):
        parent = str(loc[i - 1]) if i >= 1 else None
        if i == 1 and parent in _UNION_SECTIONS and p in _UNION_SECTIONS[parent][1]:
            tagged = (len(parts), parent, _UNION_SECTIONS[parent][0], p)
            continue
        if i >= 2 and str(loc[i - 2]) == "groups" and p in _GROUP_KINDS:
            continue
        parts.append(p)
    return parts, tagged


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
