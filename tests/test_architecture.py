"""The folder tree is the architecture: the core imports nothing beside it, no import cycles, and no
module reaches into another's private names. Checked statically on the source (every import, lazy ones
inside functions included), so a cycle hidden in a function body is found too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "dode"
CORE_ONLY = ("dode.zoo", "dode.metrics", "dode.companion", "dode.integrations")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every ``import``/``from ... import`` of a dode module in ``path``."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("dode")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dode"):
                found.append((target, [a.name for a in node.names]))
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def resolve(target: str, names: list[str]) -> list[str]:
    """The dode modules an import statement loads: ``from dode.zoo import embedded`` is the submodule."""
    out = [target] if target in MODULES else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out


def graph() -> dict[str, set[str]]:
    edges = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for target, names in imports(path):
            edges[m].update(t for t in resolve(target, names) if t != m)
    return edges


def test_the_core_imports_nothing_beside_it():
    core = [m for m in MODULES if not m.startswith(CORE_ONLY)]
    offenders = {m: sorted(t for t in graph()[m] if t.startswith(CORE_ONLY)) for m in core}
    # the thin command-line entries (dode.sweep, dode.preflight, dode.run_notebooks) start the companion
    entries = {
        m for m in core if MODULES[m].read_text().count("\n") < 25 and "__main__" in MODULES[m].read_text()
    }
    assert {m: t for m, t in offenders.items() if t and m not in entries} == {}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    private = []
    for m, path in MODULES.items():
        for target, names in imports(path):
            private += [
                f"{m}: from {target} import {n}" for n in names if n.startswith("_") and n != "__version__"
            ]
    assert private == []


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    # the checks above must be able to fail: a fake package with a cycle and a private import
    pkg = tmp_path / "dode"
    (pkg / "companion").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from dode.companion.b import _g\n")
    (pkg / "companion" / "__init__.py").write_text("")
    (pkg / "companion" / "b.py").write_text("from dode import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    monkeypatch.setattr(__import__(__name__), "MODULES", {module_name(p): p for p in pkg.rglob("*.py")})
    import pytest

    with pytest.raises(AssertionError):
        test_no_import_cycles()
    with pytest.raises(AssertionError):
        test_no_module_imports_another_modules_private_names()
    with pytest.raises(AssertionError):
        test_the_core_imports_nothing_beside_it()
