"""docs/architecture.md's layout block and the package agree, both ways.

The block lists one entry per line, indented two spaces per level: a module
(``name.py``) or a folder (``name/``), then its description. A folder whose
description contains ``(*.py)`` stands for all the modules in it (the model
families under ``sites/archs/``). ``__init__.py`` of subpackages need not be
listed.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^( *)(\S+?(?:\.py|/))(?:\s|$)")


def layout_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1]
    return section.split("```", 2)[1]


def documented():
    """(listed module paths, folders standing for all their modules, top-level non-package entries)."""
    modules, globbed, others = set(), set(), set()
    stack = []
    for line in layout_block().splitlines()[1:]:
        match = ENTRY.match(line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        name = match.group(2)
        stack = stack[:depth] + [name]
        path = "".join(stack)
        if depth == 0 and name != "intervenable/":
            others.add(path)
            continue
        if name.endswith("/"):
            modules.add(path.rstrip("/"))
            if "(*.py)" in line:
                globbed.add(path.rstrip("/"))
        else:
            modules.add(path)
    return modules, globbed, others


def actual():
    package = ROOT / "intervenable"
    found = set()
    for path in package.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py" and path.parent != package:
            found.add(str(rel.parent))
            continue
        found.add(str(rel))
    return found


def test_every_documented_module_exists():
    modules, _, others = documented()
    missing = sorted(m for m in modules if not (ROOT / m).exists())
    assert not missing, f"docs/architecture.md lists modules that do not exist: {missing}"
    assert all((ROOT / o).exists() for o in others), others


def test_every_module_is_documented():
    modules, globbed, _ = documented()
    undocumented = sorted(
        m for m in actual()
        if m not in modules and str(Path(m).parent) not in globbed
    )
    assert not undocumented, (
        f"modules missing from docs/architecture.md's layout block: {undocumented}; "
        "add a line for each (what it is for)"
    )


def test_the_parser_sees_the_layout():
    modules, globbed, others = documented()
    assert "intervenable/model.py" in modules and "intervenable/sites/archs" in globbed
    assert {"tests/", "docs/"} <= others
