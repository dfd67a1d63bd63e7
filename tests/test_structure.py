"""The layout ARCHITECTURE.md promises: the embedded suite is a client (nothing outside it imports it), no import
cycles among studio's modules, files small enough to read in one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIO = ROOT / "studio"
SUITE = "studio.shapes"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in STUDIO.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The studio modules a file imports, anywhere in it (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("studio")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studio"):
            for alias in node.names:  # `from studio.control import maps` imports the module studio.control.maps
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def test_nothing_outside_the_suite_imports_it():
    known = modules()
    offenders = {name: sorted(m for m in imports(path, known) if m == SUITE or m.startswith(SUITE + "."))
                 for name, path in known.items() if not (name == SUITE or name.startswith(SUITE + "."))}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    # A package's __init__ importing its own submodules is how a package exports; skip those edges.
    graph = {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles


@pytest.mark.parametrize("path", sorted(STUDIO.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_are_small_enough_to_read(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checks_see_a_real_import(tmp_path):
    """The import reader resolves `from package import module` to the module, so the two tests above can fail."""
    known = modules()
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from studio.shapes import scenes\n")
    assert imports(probe, known) == {"studio.shapes.scenes"}
