"""scripts/demo.sh installs the runtime dependencies only; scripts/test.sh adds the dev extras.

bootstrap.sh runs in a copy of the scripts with a fake ``python3`` that records every call
(``-m venv`` creates a ``.venv/bin/python`` that is the same recorder), so no package is installed.
"""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi
"""


def _bootstrap(repo: Path, *args: str) -> list:
    calls = repo / "calls.txt"
    calls.write_text("")
    env = dict(os.environ, PYTHON=str(repo / "fake-python3"), CALLS=str(calls))
    subprocess.run(["bash", "scripts/bootstrap.sh", *args], cwd=repo, env=env, check=True, capture_output=True)
    return [line for line in calls.read_text().splitlines() if line.startswith("-m pip install")]


def test_runtime_then_dev_install_what_each_needs_once(tmp_path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)

    runtime = _bootstrap(tmp_path)  # what demo.sh runs
    assert runtime == ["-m pip install -q --upgrade pip", "-m pip install -q torch==2.13.0", "-m pip install -q -e ."]
    assert _bootstrap(tmp_path, "runtime") == []  # stamped: nothing again
    dev = _bootstrap(tmp_path, "dev")  # what test.sh runs: the runtime part is already there
    assert dev[0] == "-m pip install -q -e .[dev]" and not any("torch" in c or c.endswith(" -e .") for c in dev)
    assert _bootstrap(tmp_path, "dev") == []
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text() + "\n# changed\n")
    again = _bootstrap(tmp_path, "dev")  # a change reinstalls both parts
    assert again[:3] == runtime and "-m pip install -q -e .[dev]" in again


def test_demo_and_test_scripts_ask_for_their_part() -> None:
    assert "bash scripts/bootstrap.sh runtime" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/bootstrap.sh dev" in (ROOT / "scripts" / "test.sh").read_text()
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "everything"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
