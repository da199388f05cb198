"""The architecture, checked: layers, no import cycles, no per-store branches or private access outside stores/.

ARCHITECTURE.md describes the layers; this test keeps the code to it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cb_backups"
STORES = ("postgres", "valkey", "neo4j", "qdrant", "opensearch")

# A module may import modules of its own layer or a lower one, never a higher one.
LAYERS = {
    "core": 0,
    "config": 1,
    "stores": 2,
    "checks": 3, "offsite": 3, "full_system": 3, "retention": 3, "restore": 3, "report": 3,
    "defs": 4,
    "definitions": 5,
    "cli": 6, "demo": 6,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """cb_backups modules imported anywhere in the file (function-level too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles() -> None:
    edges = graph()
    # a package's __init__ is imported by its submodules implicitly; only explicit imports count here
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for module, targets in graph().items():
        mine = layer(module)
        assert mine is not None or module == "cb_backups", f"{module} is in no layer: add it to LAYERS"
        for target in targets:
            theirs = layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not bad, "\n".join(sorted(bad))


def _source_outside_stores() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in PACKAGE.rglob("*.py") if "stores" not in p.relative_to(PACKAGE).parts]


def test_nothing_outside_stores_branches_on_a_store_name() -> None:
    names = "|".join(STORES)
    branch = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']""")
    hits = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
            for p, text in _source_outside_stores()
            for n, line in enumerate(text.splitlines(), 1) if branch.search(line)]
    assert not hits, "per-store branches outside stores/:\n" + "\n".join(hits)


def test_no_attr_defined_ignores_and_no_dynamic_registries() -> None:
    hits = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
            for p in PACKAGE.rglob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1)
            if "type: ignore[attr-defined" in line or re.search(r"\b(find_spec|import_module)\b", line)]
    assert not hits, "\n".join(hits)


def _private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_member_used_across_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    own = _private_names(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls", "super"):
                continue
            if node.attr in own:
                continue
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cb_backups"):
            hits += [f"line {node.lineno}: imports {node.module}.{a.name}" for a in node.names
                     if a.name.startswith("_") and not a.name.startswith("__")]
    assert not hits, "private members of other modules:\n" + "\n".join(hits)
