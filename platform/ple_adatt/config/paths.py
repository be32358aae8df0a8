"""The one override engine: dotted get/set, `key.path=value` parsing, path resolution, arch switches.

    data = apply_overrides(data, ["train.lr=3e-4", "model.logit_transfer.edges.0.strength=0.3"], problems)
    data = apply_values(data, {"model.arch": "mmoe", "model.num_experts": 3})   # tune / ablation values

Command-line overrides, tune search spaces, ablation variants, `base:` inheritance and the data
generator's overrides all go through here, so a dotted path means the same thing everywhere:
numeric parts index existing lists; setting `model.arch` to another architecture drops the fields of
the base's model section that the new architecture does not have (reported as a ConfigNote warning,
never silently), while values given in the same batch are kept and validated strictly.
"""
from __future__ import annotations

import copy
import os
import posixpath
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ple_adatt.config import storage
from ple_adatt.config.schema import MODEL_ARCHS
from ple_adatt.config.storage import is_uri


class ConfigError(ValueError):
    """All problems of one config, one per line, each starting with its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class ConfigNote(UserWarning):
    """Something the engine did for the user that they should know about (fields dropped by an
    architecture switch). Python prints each distinct note once per process."""


_NOTES_SHOWN: dict = {}
"""warnings registry of the notes: each distinct note is shown once per process."""


def note(message: str) -> None:
    """Report a ConfigNote (shown as `config: ConfigNote: <message>`, without a source line)."""
    warnings.warn_explicit(ConfigNote(message), ConfigNote, "config", 0, module="ple_adatt.config",
                           registry=_NOTES_SHOWN)


# ----------------------------------------------------------------------------- files and paths

def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a local file or a URI (config/storage.py)."""
    path = str(path) if is_uri(str(path)) else Path(path)
    try:
        found = storage.is_file(str(path)) if isinstance(path, str) else path.is_file()
    except OSError as e:  # unreachable storage
        raise ConfigError(str(path), [f"cannot read: {e}"]) from None
    if not found:
        raise ConfigError(str(path), [f"file not found: {path}"])
    try:
        data = yaml.safe_load(storage.read_text(path) if isinstance(path, str) else path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    return data


def resolve_path(value: Any, folder: str | Path) -> Any:
    """The one rule for paths written in configs: a URI (`s3://...`) or an absolute path is kept as
    written; a relative path is joined to `folder` (the folder of the file that says it, the working
    directory for command-line overrides; a URI folder for a file read from a URI). Lists are
    resolved item by item; other values pass through."""
    if isinstance(value, list):
        return [resolve_path(v, folder) for v in value]
    if not isinstance(value, (str, Path)) or is_uri(str(value)) or Path(value).is_absolute():
        return str(value) if isinstance(value, Path) else value
    if is_uri(str(folder)):
        scheme, rest = str(folder).split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, str(value)))}"
    return os.path.abspath(os.path.join(folder, value))


def load_dataset_dict(path: str | Path) -> dict[str, Any]:
    """A dataset YAML (local or URI) as a dict whose split paths are absolute (resolved against the
    YAML's folder: a dataset folder uploaded to s3:// as it is keeps working)."""
    path = str(path) if is_uri(str(path)) else Path(path).resolve()
    data = read_yaml(path)
    splits = data.get("splits")
    if isinstance(splits, dict):
        folder = storage.parent(path) if isinstance(path, str) else path.parent
        data["splits"] = {k: resolve_path(v, folder) for k, v in splits.items()}
    return data


def dataset_value(ref: str, folder: str | Path) -> dict | str:
    """`dataset: ref` (in a file in `folder`, or `dataset=ref` on the command line with the working
    directory): the dataset YAML (a local file or a URI) inlined with absolute split paths. A file
    that does not exist yet (generated data) stays a string: `validate` reports it if nothing replaces it."""
    ref = resolve_path(ref, folder)
    if is_uri(ref):
        return load_dataset_dict(ref)  # ConfigError names the URI when it is missing or unreadable
    return load_dataset_dict(ref) if Path(ref).is_file() else ref


def resolve_dataset_overrides(overrides: Iterable[str], folder: str | Path) -> list[str]:
    """`dataset=rel/path.yaml` written inside a campaign/study file is relative to that file (like
    `base:`); every other override is returned unchanged."""
    out = []
    for o in overrides:
        if o.startswith("dataset="):
            o = f"dataset={resolve_path(o[len('dataset='):], folder)}"
        out.append(o)
    return out


# ----------------------------------------------------------------------------- dotted paths

def set_path(data: dict, path: str, value: Any) -> dict:
    """Copy of `data` with the dotted `path` set to `value`. Missing mappings are created; a numeric
    part indexes an existing list (`model.logit_transfer.edges.0.strength`). KeyError names the path."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = path.split(".")
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise KeyError(f"{path}: '{p}' is not an index of the {len(node)}-item list at "
                               f"'{'.'.join(parts[:i])}' (valid: 0..{len(node) - 1})")
            key: Any = int(p)
        elif isinstance(node, dict):
            key = p
            if not last and node.get(p) is None:
                node[p] = {}
        else:
            raise KeyError(f"{path}: cannot set inside '{'.'.join(parts[:i])}', which is "
                           f"{type(node).__name__} {node!r}, not a mapping or list")
        if last:
            node[key] = copy.deepcopy(value)
        else:
            node = node[key]
    return out


_MISSING = object()


def get_path(data: dict, path: str, default: Any = _MISSING) -> Any:
    """The value at a dotted path (numeric parts index lists); `default` if absent, else KeyError."""
    node: Any = data
    for p in path.split("."):
        if isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        elif default is _MISSING:
            raise KeyError(path)
        else:
            return default
    return node


# ----------------------------------------------------------------------------- architecture switches

# Tagged sections: tag path -> (the tag's default, tag value -> the fields that variant has).
SWITCHES: dict[str, tuple[str, dict[str, set[str]]]] = {
    "model.arch": ("ple", {arch: set(cls.model_fields) for arch, cls in MODEL_ARCHS.items()}),
}


def switch_section(data: dict, tag_path: str, new: Any) -> dict:
    """`data` about to get `tag_path = new`: if that changes the variant, drop the section's fields the
    new variant does not have (with a ConfigNote naming them). Unknown variants are left to validation."""
    default, fields = SWITCHES[tag_path]
    section_path, tag = tag_path.rsplit(".", 1)
    section = get_path(data, section_path, None)
    if not isinstance(section, dict) or new not in fields or section.get(tag, default) == new:
        return data
    dropped = [k for k in section if k not in fields[new]]
    if not dropped:
        return data
    note(f"{tag_path}={new} (was {section.get(tag, default)}): dropped "
         f"{', '.join(f'{section_path}.{k}' for k in dropped)} from the base config ({new} has no such fields)")
    return set_path(data, section_path, {k: v for k, v in section.items() if k not in dropped})


def apply_values(data: dict, values: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict:
    """Copy of `data` with every dotted `path: value` set. Tags (`model.arch`) are applied first, so an
    architecture switch drops only what came from `data`, never a value given alongside it."""
    items = list(values.items() if isinstance(values, Mapping) else values)
    items.sort(key=lambda kv: kv[0] not in SWITCHES)  # stable: otherwise in the given order
    for path, value in items:
        if path in SWITCHES:
            data = switch_section(data, path, value)
        data = set_path(data, path, value)
    return data


# ----------------------------------------------------------------------------- overrides

def parse_value(raw: str) -> Any:
    """An override value: YAML (numbers, bools, lists, mappings); '' is None; `3e-4` is a float."""
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    # PyYAML reads `3e-4` as a string (YAML 1.1); treat it as the float a user meant.
    if isinstance(value, str) and any(c in value for c in "eE."):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_override(item: str, folder: str | Path | None = None) -> tuple[str, Any]:
    """`key.path=value` -> (key, parsed value). `dataset=path.yaml` is inlined (`dataset_value`,
    relative to `folder`, default the working directory). ValueError says what was expected."""
    key, sep, raw = item.partition("=")
    if item.startswith("-") or not sep or not key:
        raise ValueError(f"override '{item}': expected key.path=value (no --flags)")
    value = parse_value(raw)
    if key == "dataset" and isinstance(value, str):
        value = dataset_value(value, folder if folder is not None else os.getcwd())
    return key, value


def apply_overrides(data: dict, overrides: Iterable[str], problems: list[str],
                    folder: str | Path | None = None) -> dict:
    """Copy of `data` with `key.path=value` overrides applied (`apply_values`); each bad override
    adds a line to `problems` and is skipped, so all are reported at once."""
    values: list[tuple[str, Any]] = []
    for item in overrides:
        try:
            values.append(parse_override(str(item), folder))
        except (ValueError, ConfigError) as e:
            problems += e.problems if isinstance(e, ConfigError) else [str(e)]
    out = copy.deepcopy(data)
    for path, value in sorted(values, key=lambda kv: kv[0] not in SWITCHES):
        try:
            out = apply_values(out, [(path, value)])
        except KeyError as e:
            problems.append(e.args[0])
    return out
