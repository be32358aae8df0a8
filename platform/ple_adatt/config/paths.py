"""The one dotted-path engine: get and set values in nested config dicts by `a.b.0.c` paths.

Numeric parts index existing lists (`model.logit_transfer.edges.0.strength`). Used by CLI
overrides, tune search spaces and ablation variants alike.
"""
from __future__ import annotations

import copy
from typing import Any


def set_path(data: dict, path: str, value: Any) -> dict:
    """Copy of `data` with the dotted `path` set to `value`. Missing mappings are created; a numeric
    part indexes an existing list (`model.logit_transfer.edges.0.strength`)."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = path.split(".")
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise KeyError(f"{path}: '{p}' is not an index of the {len(node)}-item list at "
                               f"'{'.'.join(parts[:i])}'")
            key: Any = int(p)
        elif isinstance(node, dict):
            key = p
            if not last and node.get(p) is None:
                node[p] = {}
        else:
            raise KeyError(f"{path}: '{parts[i - 1]}' is not a mapping (it is {node!r})")
        if last:
            node[key] = copy.deepcopy(value)
        else:
            node = node[key]
    return out


_MISSING = object()


def get_path(data: dict, path: str, default: Any = _MISSING) -> Any:
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
