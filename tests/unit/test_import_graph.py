"""Imports point one way (ARCHITECTURE §2): model/losses/adatt <- train <- launch <- jobs, with config,
data and tracking below train, report below launch. No import cycle, lazy imports included: a cycle
hidden inside a function (launch.tune <-> launch.study_config once) is still a cycle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PLATFORM = Path(__file__).resolve().parents[2] / "platform"

ALLOWED = {  # package -> the other top-level packages of ple_adatt it may import
    "config": set(),
    "model": {"losses"},
    "losses": set(),
    "adatt": {"losses"},
    "data": {"config"},
    "tracking": {"config"},
    "train": {"config", "data", "model", "losses", "adatt", "tracking"},
    "report": {"config", "train", "tracking"},
    "launch": {"config", "data", "model", "losses", "adatt", "tracking", "train", "report"},
    "cli": {"config", "data", "tracking", "train", "report", "launch"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PLATFORM).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the ple_adatt modules it imports anywhere in its body (relative imports resolved)."""
    modules = {_module_name(p): p for p in PLATFORM.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            deps |= {n for n in names if n.split(".")[0] == "ple_adatt" and n != mod}
        graph[mod] = {d for d in deps if d in modules}
    return graph


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_imports_point_down():
    bad = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                 if _top(m) != _top(d) and _top(m) in ALLOWED and _top(d) not in ALLOWED[_top(m)])
    assert not bad, "imports pointing up or sideways:\n" + "\n".join(bad)


def test_every_package_has_a_rule():
    tops = {_top(m) for m in import_graph()} - {"<root>"}
    assert tops == set(ALLOWED), f"packages without an import rule: {tops ^ set(ALLOWED)}"


def test_no_import_cycle():
    graph, state, cycles = import_graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:  # depth-first; state 1 = on the stack, 2 = done
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [m, d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    # A package __init__ importing its own submodules is not a cycle of ideas; anything else is.
    real = [c for c in cycles if not all(x.startswith(c.split(" -> ")[-1]) for x in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


# A fresh interpreter importing every module takes ~8 s: it runs with the multi-process tier.
@pytest.mark.integration
def test_every_module_imports_in_a_fresh_interpreter():
    mods = sorted(import_graph())
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
