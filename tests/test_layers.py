"""docs/DESIGN.md's one-way dependency plan, for the parts that everything stands on:
the lower layers and store/ import nothing above them at run time, and nothing in the
library imports its edges (cli, testing, ingest, compat). Imports under
``if TYPE_CHECKING:`` only name types and do not count."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "celeryflow"
# Layers 1-4 of the plan, lowest first; a module may import only from layers below or
# its own (within a layer, the modules do not import each other in a cycle).
LAYERS = [
    {"errors", "logs"},
    {"durations", "codec", "expressions", "schedule"},
    {"events", "flowcontrol"},
    {"runs"},
]
EDGES = {"cli", "testing", "pytest_plugin", "django", "ingest", "compat"}


def top(module: str) -> str:
    """`celeryflow.store.waits` -> `store`; `celeryflow` -> `` (the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """The celeryflow modules `path` imports when it is imported or run."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                if target.startswith("celeryflow"):
                    if child.module is None or target == "celeryflow":
                        found.update(f"{target}.{a.name}" for a in child.names)
                    else:
                        found.add(target)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("celeryflow"))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def layer_of(name: str) -> int:
    """The layer index of `name`; len(LAYERS) for anything above layer 4."""
    for i, layer in enumerate(LAYERS):
        if top(name) in layer:
            return i
    return len(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_dependency_plan(path: Path) -> None:
    name = module_name(path)
    imports = {i for i in runtime_imports(path) if top(i) != top(name)}
    mine = layer_of(name)
    if mine < len(LAYERS):
        above = {i for i in imports if layer_of(i) > mine}
        assert not above, f"{name} (layer {mine + 1}) imports from above: {sorted(above)}"
    if top(name) == "store":
        above = {i for i in imports if layer_of(i) == len(LAYERS)}
        assert not above, f"{name} (store/) imports from above the store: {sorted(above)}"
    if top(name) not in EDGES and name != "celeryflow":
        edges = {i for i in imports if top(i) in EDGES}
        assert not edges, f"{name} imports the edges {sorted(edges)}"


def test_the_import_scanner_sees_relative_and_skips_type_checking() -> None:
    engine = PACKAGE / "engine.py"
    found = runtime_imports(engine)
    assert "celeryflow.store" in found and "celeryflow.steps" in found
    assert "celeryflow.flow" not in found  # only under TYPE_CHECKING
    waits = runtime_imports(PACKAGE / "store" / "waits.py")
    assert "celeryflow.runs" in waits and "celeryflow.store.tables" in waits


def test_the_import_linter_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter]: the whole layer order of the plan, and no
    import circle in any package (compat/ and store/ included)."""
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "lint-imports is missing: install the dev extra (import-linter)"
    result = subprocess.run(
        [str(lint), "--no-cache", str(PACKAGE.parent / "pyproject.toml")],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
