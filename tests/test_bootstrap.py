"""scripts/demo.sh installs the runtime dependencies only; scripts/test.sh adds the dev extras.

bootstrap.sh runs in a copy of the scripts with a fake ``python3`` that records every call
(``-m venv`` creates a ``.venv/bin/python`` that is the same recorder), so no package is installed.
"""
import os
import re
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

    newest, oldest = _pins()
    runtime = _bootstrap(tmp_path)  # what demo.sh runs
    assert runtime == ["-m pip install -q --upgrade pip", "-m pip install -q torch==2.13.0",
                       f"-m pip install -q -e . transformers=={newest}"]
    assert _bootstrap(tmp_path, "runtime") == []  # stamped: nothing again
    dev = _bootstrap(tmp_path, "dev")  # what test.sh runs: the runtime part is already there
    assert dev[0] == f"-m pip install -q -e .[dev] transformers=={newest}"
    assert not any("torch" in c or c.endswith(" -e .") for c in dev)
    assert _bootstrap(tmp_path, "dev") == []
    old = _bootstrap(tmp_path, "oldest")  # test.sh's second venv: torch first, then the oldest transformers
    assert (tmp_path / ".venv-oldest" / "bin" / "python").exists()
    assert old[:3] == ["-m pip install -q --upgrade pip", "-m pip install -q torch==2.13.0",
                       f"-m pip install -q -e .[dev] transformers=={oldest}"]
    assert not any(newest in c for c in old) and _bootstrap(tmp_path, "oldest") == []
    last4 = _bootstrap(tmp_path, "last4")  # test.sh's third venv: the last 4.x release, built the same way
    assert (tmp_path / ".venv-last4" / "bin" / "python").exists()
    assert last4[:3] == ["-m pip install -q --upgrade pip", "-m pip install -q torch==2.13.0",
                         f"-m pip install -q -e .[dev] transformers=={_last4()}"]
    assert _bootstrap(tmp_path, "last4") == []
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text() + "\n# changed\n")
    again = _bootstrap(tmp_path, "dev")  # a change reinstalls both parts
    assert again[:3] == runtime and f"-m pip install -q -e .[dev] transformers=={newest}" in again


def _pins() -> tuple:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    pins = dict(re.findall(r"^(NEWEST|OLDEST)_TRANSFORMERS=(\S+)$", text, re.M))
    return pins["NEWEST"], pins["OLDEST"]


def _last4() -> str:
    return re.search(r"^LAST4_TRANSFORMERS=(\S+)$", (ROOT / "scripts" / "bootstrap.sh").read_text(), re.M).group(1)


def test_the_declared_transformers_range_is_the_tested_one() -> None:
    """pyproject.toml admits exactly the pinned ends' range: from the oldest tested to the newest tested minor."""
    newest, oldest = _pins()
    specs = re.findall(r'^\s*"(transformers[^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(specs) == 1, specs
    spec = specs[0]
    major, minor = (int(x) for x in newest.split(".")[:2])
    assert spec == f"transformers>={oldest},<{major}.{minor + 1}", spec
    readme = (ROOT / "README.md").read_text()
    assert f"transformers {oldest}" in readme and f"transformers {newest}" in readme
    last4 = _last4()
    version = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert last4.startswith("4.") and version(oldest) < version(last4) and f"transformers {last4}" in readme


def test_the_test_script_fails_when_either_run_fails(tmp_path) -> None:
    """scripts/test.sh runs pytest in .venv, .venv-oldest and .venv-last4, all always, and fails if one fails."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "bootstrap.sh").write_text("exit 0\n")  # the venvs are the fakes below
    for venv, rc in ((".venv", 0), (".venv-oldest", 1), (".venv-last4", 0)):
        (tmp_path / venv / "bin").mkdir(parents=True)
        fake = tmp_path / venv / "bin" / "python"
        fake.write_text(f"#!/usr/bin/env bash\n"
                        f"if [ \"$1\" = -c ]; then echo {venv}-version; exit 0; fi\n"
                        f"echo \"{venv} $*\" >> \"$CALLS\"; exit {rc}\n")
        fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    run = subprocess.run(["bash", "scripts/test.sh", "tests/test_x.py"], cwd=tmp_path, capture_output=True,
                         text=True, env=dict(os.environ, CALLS=str(calls)))
    assert run.returncode == 1 and "FAILED on transformers .venv-oldest-version" in run.stderr
    assert calls.read_text().splitlines() == [
        f"{venv} -m pytest -n 2 -q -p no:cacheprovider tests/test_x.py" for venv in (".venv", ".venv-oldest", ".venv-last4")]


def test_demo_and_test_scripts_ask_for_their_part() -> None:
    assert "bash scripts/bootstrap.sh runtime" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/bootstrap.sh dev" in (ROOT / "scripts" / "test.sh").read_text()
    assert "bash scripts/bootstrap.sh oldest" in (ROOT / "scripts" / "test.sh").read_text()
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "everything"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_pip_is_silent_on_success_and_its_whole_log_is_shown_on_failure(tmp_path) -> None:
    """The demo's first run prints one line before its result; a failing install prints all of pip's log."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON + 'if [ "$2" = pip ]; then\n'
                    '  echo "BuildBackendWarning: Editable installation. (pip log line 1)"; echo "pip log line 2" >&2\n'
                    '  case "$*" in *"$FAIL_ON"*) echo "ERROR: no such version"; exit 1 ;; esac\n'
                    'fi\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), CALLS=str(tmp_path / "calls.txt"), FAIL_ON="no-failure")
    ok = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == ""
    assert ok.stderr.splitlines() == [line for line in ok.stderr.splitlines() if line.startswith("bootstrap: installing")]
    assert len(ok.stderr.splitlines()) == 1
    shutil.rmtree(tmp_path / ".venv")
    bad = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=tmp_path, env=dict(env, FAIL_ON="torch=="),
                         capture_output=True, text=True)
    assert bad.returncode == 1
    for line in ("pip install torch==2.13.0 failed", "pip log line 1", "pip log line 2", "ERROR: no such version"):
        assert line in bad.stderr, bad.stderr
