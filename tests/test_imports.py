"""The package's import graph, read from the source with ``ast``: no cycle among the core modules (not even
through an import inside a function), none at module level anywhere, and every module imports in a fresh
interpreter in dependency order (leaves first).

An edge A -> B means A imports B. ``from selectune.x.y import z`` also runs ``selectune/x/__init__.py``
unless A lives inside ``selectune.x``, so it is an edge to ``selectune.x`` too: that is how a package
``__init__`` that imports its submodules closes a cycle.
"""
from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "selectune"

# The bottom of the package: formats and model surgery that every stage uses. Order, one way:
# io, fingerprint, masks -> roles -> methods -> selection -> delta -> multi_delta.
CORE_MODULES = {"selectune.io", "selectune.fingerprint", "selectune.roles", "selectune.masks", "selectune.methods",
                "selectune.selection", "selectune.delta", "selectune.multi_delta"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runs_at_import(tree: ast.Module) -> list[ast.stmt]:
    """Statements executed when the module is imported: not function bodies (class bodies do run), not ``if TYPE_CHECKING:``."""
    run, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue  # annotations only (``from __future__ import annotations``): never runs
        run.append(node)
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return run


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The selectune modules an import statement names (resolving relative imports)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "selectune"}
    base = node.module or ""
    if node.level:
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    if base.split(".")[0] != "selectune":
        return set()
    # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}


def import_graph(*, module_level_only: bool) -> dict[str, dict[str, int]]:
    """importer -> {imported selectune module: line}, with the package ``__init__`` files an import runs."""
    files = module_files()
    graph: dict[str, dict[str, int]] = {name: {} for name in files}
    for importer, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        statements = _runs_at_import(tree) if module_level_only else list(ast.walk(tree))
        for node in statements:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, importer, path.name == "__init__.py", set(files)):
                parts = target.split(".")
                # The target and the parent packages the import initialises (not those the importer lives in).
                for depth in range(1, len(parts) + 1):
                    name = ".".join(parts[:depth])
                    inside = importer == name or importer.startswith(name + ".")
                    if name in files and name != importer and not (inside and name != target):
                        graph[importer].setdefault(name, node.lineno)
    return graph


def _is_core(name: str) -> bool:
    return name in CORE_MODULES or name.startswith("selectune.methods.")


def _order_or_cycle(graph: dict[str, dict[str, int]]) -> tuple[list[str], str | None]:
    """(modules leaves first, None), or ([], the cycle as 'a (line n) -> b (line m) -> ... -> a')."""
    try:
        return list(graphlib.TopologicalSorter({m: set(deps) for m, deps in graph.items()}).static_order()), None
    except graphlib.CycleError as err:
        cycle = err.args[1][::-1]  # CycleError lists it against the edges: b, a, b for a -> b -> a
        return [], " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_graph_sees_module_function_and_relative_imports():
    # The check below is only as good as the graph: spot-check edges of each kind.
    everywhere, top = import_graph(module_level_only=False), import_graph(module_level_only=True)
    assert "selectune.selection" in top["selectune.delta"]  # from selectune.selection import Selection
    assert "selectune.data.readers" in top["selectune.data.checks"]  # from .readers import DataError
    assert "selectune.methods.bitfit" in top["selectune.methods"]  # from selectune.methods import bitfit, ...
    assert "selectune.models" in everywhere["selectune.cli"]  # inside a function (inspect)
    assert "selectune.models" not in top["selectune.cli"]
    assert "selectune.methods" in top["selectune.selection"]  # from selectune.methods.spec import ...: runs methods/__init__
    assert "selectune.evaluate" not in top["selectune.evaluate.gate"]  # its own package is already initialising
    assert set(top) == set(module_files()) and len(top) > 50


def test_core_modules_import_each_other_one_way():
    # Function-level imports count: one that only dodges a cycle is still a cycle.
    everywhere = import_graph(module_level_only=False)
    core = {m: {d: line for d, line in deps.items() if _is_core(d)} for m, deps in everywhere.items() if _is_core(m)}
    _, cycle = _order_or_cycle(core)
    assert cycle is None, f"import cycle among the core modules: {cycle}"
    assert set(core) >= CORE_MODULES


def test_module_level_imports_have_no_cycle():
    _, cycle = _order_or_cycle(import_graph(module_level_only=True))
    assert cycle is None, f"module-level import cycle: {cycle}"


def test_every_module_imports_in_dependency_order_in_a_fresh_interpreter():
    order, cycle = _order_or_cycle(import_graph(module_level_only=True))
    assert cycle is None, f"module-level import cycle: {cycle}"
    script = ("import importlib, sys\n"
              f"for name in {order!r}:\n"
              "    importlib.import_module(name)\n"
              "    print(name)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"importing in order {order} failed after {done.stdout.split()[-1:]}:\n{done.stderr[-3000:]}"
    assert done.stdout.split() == order
