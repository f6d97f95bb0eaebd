"""docs/compatibility.md covers every public name of pyvene 0.1.8, and what it marks `have` exists here."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import intervenable as pv

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|")


def _reference_names() -> List[str]:
    lines = (ROOT / "tests" / "data" / "pyvene_0_1_8_public_names.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _documented() -> Dict[str, str]:
    rows = {}
    for line in (ROOT / "docs" / "compatibility.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _instances() -> Dict[str, object]:
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    model = pv.IntervenableModel({"component": "lin.output", "intervention": pv.ZeroIntervention}, Tiny())
    return {
        "IntervenableModel": model,
        "IntervenableConfig": pv.IntervenableConfig([{"component": "h[0].output"}]),
        "RepresentationConfig": pv.RepresentationConfig(),
    }


def test_every_reference_name_is_documented() -> None:
    documented = _documented()
    missing = [name for name in _reference_names() if name not in documented]
    assert not missing, f"docs/compatibility.md does not list: {missing}"
    ours = [name for name in _reference_names() if "." not in name and hasattr(pv, name)]
    assert ours and all(name in documented for name in ours)


def test_names_marked_have_exist_and_others_do_not() -> None:
    instances = _instances()
    wrong = []
    for name, status in _documented().items():
        if "." in name:
            owner, attr = name.split(".", 1)
            exists = hasattr(instances[owner], attr)
        else:
            exists = hasattr(pv, name)
        if status.startswith("have") != exists:
            wrong.append((name, status, exists))
    assert not wrong, f"status disagrees with the code (name, status, exists): {wrong}"
