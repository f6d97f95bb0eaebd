"""The package's import graph has no cycle: each layer imports only the layers below it.

Every import counts, as ``ast`` reads it: at module level, under ``if TYPE_CHECKING:``, and inside
functions (a deferred import is still a dependency; deferring it only hides a cycle from Python).
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent / "intervenable"
PACKAGE = "intervenable"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            # "from .x import y": module .x.y when y is a submodule, else module .x (y is its attribute)
            targets = [f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            while target not in known and "." in target:  # "pkg.mod.attr" -> "pkg.mod"
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> Dict[str, Set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle through each strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_and_a_type_checking_import(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "low.py").write_text("def f():\n    from .high import g\n")
    (pkg / "high.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import low\n")
    known = {f"{PACKAGE}.low", f"{PACKAGE}.high"}
    assert imports_of(f"{PACKAGE}.low", pkg / "low.py", known) == {f"{PACKAGE}.high"}
    assert imports_of(f"{PACKAGE}.high", pkg / "high.py", known) == {f"{PACKAGE}.low"}


def test_the_package_import_graph_has_no_cycle():
    edges = graph()
    assert len(edges) > 50 and f"{PACKAGE}.model" in edges[f"{PACKAGE}.training"] | edges[f"{PACKAGE}.model"] | {
        f"{PACKAGE}.model"}
    assert cycles(edges) == []
