"""The package's layers, one direction: every import inside `halo_rlm` goes to its own layer or one
below, and no module reaches itself through its imports. Imports inside functions and under
TYPE_CHECKING count too: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import halo_rlm

ROOT = Path(halo_rlm.__file__).parent

# Lowest first. A module belongs to the layer of the longest name here that is it or contains it.
LAYERS: list[tuple[str, ...]] = [
    ("halo_rlm.__about__", "halo_rlm.defaults", "halo_rlm.utils", "halo_rlm.usage"),
    (
        "halo_rlm.files",
        "halo_rlm.formats",
        "halo_rlm.scrub",
        "halo_rlm.pricing",
        "halo_rlm.providers",
        "halo_rlm.report",
        "halo_rlm.sandbox",
        "halo_rlm.repo",
    ),
    ("halo_rlm.store", "halo_rlm.llm", "halo_rlm.tracing", "halo_rlm.simulate"),
    ("halo_rlm.sources", "halo_rlm.collect", "halo_rlm.detect", "halo_rlm.verify", "halo_rlm.render"),
    ("halo_rlm.engine",),
    ("halo_rlm.runs", "halo_rlm.analyses", "halo_rlm.compare", "halo_rlm.evaluate", "halo_rlm.trail"),
    ("halo_rlm.loop",),
    ("halo_rlm.cli", "halo_rlm.web"),
    ("halo_rlm", "halo_rlm.__main__"),  # the public API facade and `python -m halo_rlm`
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The halo_rlm modules a file imports (a `from package import name` of a submodule counts as
    importing that submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "halo_rlm"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "halo_rlm":
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= submodules or {node.module}
            if submodules and len(submodules) < len(node.names):
                found.add(node.module)
    return found


def layer(module: str) -> int:
    best, level = "", -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, level = name, i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return level


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name)


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_check_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above would fail on the faults they look for."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from halo_rlm.engine import run\nimport halo_rlm.store\n")
    b.write_text("from halo_rlm import store, utils\nfrom halo_rlm.store import TraceStore\n")
    known = {"halo_rlm.engine", "halo_rlm.engine.run", "halo_rlm.store", "halo_rlm.utils"}
    assert imports(a, known) == {"halo_rlm.engine.run", "halo_rlm.store"}
    assert imports(b, known) == {"halo_rlm.store", "halo_rlm.utils"}
    assert layer("halo_rlm.engine.run") > layer("halo_rlm.store.duckdb_store") > layer("halo_rlm.utils")
    assert layer("halo_rlm.cli.base") > layer("halo_rlm.engine")
