"""The package's shape: the flow between hf_bae's modules runs one way (no import cycle, lazy imports
inside functions included), every module imports on its own in a fresh interpreter, and every module
opens with a docstring saying what it owns (ARCHITECTURE.md lists them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_bae"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """hf_bae modules that `module` imports anywhere in its body (except under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            node.body = []
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            candidates = [str(node.args[0].value)]
        else:
            continue
        out |= {c for c in candidates if c in MODULES and c != module}
    # A submodule importing its own package's __init__ (for a sibling) is not a dependency on the package.
    return {m for m in out if not (module.startswith(m + ".") and MODULES[m].name == "__init__.py")}


def import_graph() -> dict[str, set[str]]:
    return {m: _imported(m, p) for m, p in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_hf_bae_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + " | ".join(" -> ".join(c) for c in cycles)


def test_every_module_opens_with_a_docstring():
    missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without an opening docstring: {missing}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module would cost minutes. Purging hf_bae from `sys.modules` before each
    # import (leaves first) catches the same thing: a module that only imports because another one
    # was imported before it.
    graph = import_graph()
    order, seen = [], set()

    def visit(node: str) -> None:
        if node in seen:
            return
        seen.add(node)
        for dep in sorted(graph[node]):
            visit(dep)
        order.append(node)

    for node in sorted(graph):
        visit(node)
    order.remove("hf_bae.__main__")  # running it is the CLI
    script = (
        "import importlib, sys\n"
        f"for name in {order!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'hf_bae' or m.startswith('hf_bae.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('imported', name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"imported {order[-1]}"


@pytest.mark.parametrize("module", ["hf_bae.formats"])
def test_the_on_disk_format_module_needs_only_the_standard_library(module):
    # It is part of the remote code saved next to every dictionary (configuration imports it).
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    tree = ast.parse(MODULES[module].read_text())
    outside = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    outside |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level and n.module}
    assert outside <= stdlib, outside - stdlib


def test_the_research_entry_points_are_lazy_top_level_exports():
    script = (
        "import sys, hf_bae\n"
        "heavy = [m for m in ('hf_bae.training', 'hf_bae.interpret', 'hf_bae.browser', 'hf_bae.entropy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for name in hf_bae._LAZY:\n"
        "    value = getattr(hf_bae, name)\n"
        "    assert value.__module__.startswith('hf_bae.' + hf_bae._LAZY[name]), (name, value.__module__)\n"
        "assert set(hf_bae._LAZY) <= set(dir(hf_bae)) and set(hf_bae._LAZY) <= set(hf_bae.__all__)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
