"""Saving never loses the previous version (SIGKILL at every step), shareable file modes, save paths.

The kill test runs tests/save_kill_harness.py once: it forks a saving process
per kill and keeps the folder each kill leaves. Here every such folder must load
as exactly the old or the new version (tensors compared with the versions built
in this process, not read back through save), never neither; then one more save
must leave a clean folder that loads the version it wrote.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from typing import Any, Dict, Iterator, List

import pytest
import torch

import intervenable as pv
from intervenable.io import CONFIG_NAME, TENSORS_NAME, SerializationError
from intervenable.io.atomic import COMMIT_NAME, STAGING_PREFIX
from save_kill_harness import fresh_model, version

HARNESS = os.path.join(os.path.dirname(__file__), "save_kill_harness.py")
NOTES = "notes.txt"


def state_of(pv_model: Any) -> Dict[str, torch.Tensor]:
    (key,) = pv_model.sorted_keys
    return {name: t.detach().clone() for name, t in pv_model.interventions[key].state_dict().items()}


#: each version's tensors, from the models themselves (never through save / load)
EXPECTED = {name: state_of(version(name)) for name in ("A", "B", "C")}


def loaded_version(folder: str) -> str:
    """'A', 'B' or 'C' when the folder loads as exactly that version, 'none' when it does not load, else 'neither'."""
    before = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
    try:
        loaded = pv.IntervenableModel.load(folder, fresh_model())
    except SerializationError as exc:
        assert "interrupted" in str(exc) or "not a saved intervention" in str(exc) or "No folder" in str(exc), exc
        return "none"
    finally:  # loading reads only: it never repairs or changes the folder
        assert (sorted(os.listdir(folder)) if os.path.isdir(folder) else None) == before
    state = state_of(loaded)
    for name, expected in EXPECTED.items():
        if state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected):
            return name
    return "neither"


def hidden_entries(folder: str) -> List[str]:
    return sorted(e for e in os.listdir(folder) if e.startswith("."))


def next_save_cleans_up(folder: str, name: str, user_files: List[str]) -> None:
    version(name).save(folder)
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, TENSORS_NAME] + user_files)
    assert loaded_version(folder) == name


@pytest.fixture(scope="module")
def kills(tmp_path_factory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("kills")
    env = dict(os.environ, OMP_NUM_THREADS="1", KILLS="20")
    run = subprocess.run([sys.executable, HARNESS, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "manifest.json") as handle:
        return json.load(handle)


def check_stepwise(scenario: Dict[str, Any], old: str, new: str, user_files: List[str], cleaned_by: str) -> None:
    steps = scenario["steps"]
    commit = steps.index("committed")
    assert [s["step"] for s in scenario["states"]] == steps  # one kill after every step
    for state in scenario["states"]:
        assert state["status"] == signal.Signals.SIGKILL.name, state
        expected = old if state["step_index"] < commit else new
        assert loaded_version(state["dir"]) == expected, state
        next_save_cleans_up(state["dir"], cleaned_by, user_files)


def test_a_kill_after_any_step_of_a_save_over_a_folder_leaves_the_old_or_the_new_version(kills) -> None:
    scenario = kills["over"]
    steps = scenario["steps"]
    # the kills cover the staging, the commit and every move of a file into place
    assert {"files written", "committed", f"moved {TENSORS_NAME}", f"moved {CONFIG_NAME}"} <= set(steps)
    leftovers = {tuple(hidden_entries(s["dir"])) for s in scenario["states"]}
    assert (COMMIT_NAME,) in leftovers and any(e and e[0].startswith(STAGING_PREFIX) for e in leftovers)
    check_stepwise(scenario, old="A", new="B", user_files=[NOTES], cleaned_by="C")


def test_a_kill_during_the_first_save_leaves_no_version_or_the_new_one(kills) -> None:
    check_stepwise(kills["fresh"], old="none", new="A", user_files=[], cleaned_by="C")


def test_a_kill_while_finishing_a_killed_save_keeps_its_version(kills) -> None:
    """The start state is a commit half moved in (B) plus a staging leftover; the new save (C) is killed."""
    scenario = kills["recover"]
    assert scenario["steps"].index(f"moved {CONFIG_NAME}") < scenario["steps"].index("committed")
    check_stepwise(scenario, old="B", new="C", user_files=[NOTES], cleaned_by="A")


def test_kills_at_random_moments_of_repeated_saves(kills) -> None:
    states = kills["random"]["states"]
    assert len(states) == 20
    seen = []
    for state in states:
        assert state["status"] == signal.Signals.SIGKILL.name, state
        seen.append(loaded_version(state["dir"]))
        assert seen[-1] in ("A", "B"), state
        next_save_cleans_up(state["dir"], "C", [NOTES])
    # by construction (the harness waits for completed saves), kills landed before and after complete saves
    assert {s["saves_first"] for s in states} == {0, 1, 2}


# -- file modes ------------------------------------------------------------------------
@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_saved_files_have_the_modes_the_umask_gives(tmp_path, mask) -> None:
    folder = tmp_path / "shared"
    with umask(mask):
        version("A").save(folder)
        version("B").save(folder)  # a second save replaces the files: same modes
    assert oct(os.stat(folder).st_mode & 0o777) == oct(0o777 & ~mask)  # 0755 for umask 022, as mkdir gives
    for name in (CONFIG_NAME, TENSORS_NAME):
        assert oct(os.stat(folder / name).st_mode & 0o777) == oct(0o666 & ~mask)  # 0644, as open() gives
    assert loaded_version(str(folder)) == "B"


# -- save paths ------------------------------------------------------------------------
def test_a_path_with_a_tilde_is_expanded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    version("A").save("~/steer")
    assert sorted(os.listdir(tmp_path / "home" / "steer")) == [CONFIG_NAME, TENSORS_NAME]
    assert os.listdir(tmp_path / "cwd") == []  # no folder literally named '~'
    assert loaded_version("~/steer") == "A"


@pytest.mark.parametrize("path", ["", "   "])
def test_an_empty_path_is_refused(tmp_path, monkeypatch, path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SerializationError, match="is empty: give the folder to save into"):
        version("A").save(path)
    with pytest.raises(SerializationError, match="is empty"):
        version("A").save_intervention(path)
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def read_only(folder: Any, monkeypatch) -> Iterator[None]:
    """``folder`` without write permission (mode 0555): no entry in it can be created, renamed or removed.

    Root (with CAP_DAC_OVERRIDE) ignores permission bits: when a probe shows they
    are not enforced, the same rule is enforced by patching the os calls that
    change directory entries (honestly: a simulation there).
    """
    folder = os.path.abspath(folder)
    os.chmod(folder, 0o555)
    probe = os.path.join(folder, "probe")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        enforced = False
    except PermissionError:
        enforced = True
    if not enforced:
        def denied(path: Any) -> bool:
            return os.path.dirname(os.path.abspath(os.fsdecode(path))) == folder

        def guard(real: Any, *path_args: int) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                if "dir_fd" not in kwargs and any(denied(args[i]) for i in path_args if i < len(args)):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(args[path_args[0]]))
                return real(*args, **kwargs)
            return call

        for name in ("mkdir", "rmdir", "unlink", "remove"):
            monkeypatch.setattr(os, name, guard(getattr(os, name), 0))
        for name in ("rename", "replace"):
            monkeypatch.setattr(os, name, guard(getattr(os, name), 0, 1))
        real_open, real_os_open = builtins.open, os.open
        monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: (
            guard(real_open, 0)(f, mode, *a, **k) if isinstance(f, (str, bytes, os.PathLike)) and set(mode) & set("wax+")
            else real_open(f, mode, *a, **k)))
        monkeypatch.setattr(os, "open", lambda p, flags, *a, **k: (
            guard(real_os_open, 0)(p, flags, *a, **k) if flags & os.O_CREAT else real_os_open(p, flags, *a, **k)))
    try:
        with pytest.raises(PermissionError):  # the rule holds now, for any user
            os.mkdir(probe)
        yield
    finally:
        monkeypatch.undo()
        os.chmod(folder, 0o755)


def test_a_writable_folder_under_a_read_only_parent(tmp_path, monkeypatch) -> None:
    parent = tmp_path / "parent"
    (parent / "steer").mkdir(parents=True)
    version("A").save(parent / "steer")
    with read_only(parent, monkeypatch):
        version("B").save(parent / "steer")  # everything happens inside the folder: the parent is never written
        assert loaded_version(str(parent / "steer")) == "B"
        with pytest.raises(SerializationError, match=r"Could not create the folder '.*parent/new' \(Permission denied\)"):
            version("B").save(parent / "new")
    assert sorted(os.listdir(parent)) == ["steer"]


def test_an_unwritable_folder_keeps_its_version_and_says_what_failed(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "steer"
    version("A").save(folder)
    with read_only(folder, monkeypatch):
        with pytest.raises(SerializationError) as info:
            version("B").save(folder)
    message = str(info.value)
    assert f"Could not write the saved intervention into {str(folder)!r}: Permission denied" in message
    assert "previous version, if any, is unchanged" in message and STAGING_PREFIX not in message
    assert sorted(os.listdir(folder)) == [CONFIG_NAME, TENSORS_NAME]
    assert loaded_version(str(folder)) == "A"


def test_a_file_in_the_way_is_refused(tmp_path) -> None:
    (tmp_path / "steer").write_text("not a folder")
    with pytest.raises(SerializationError, match="exists and is not a folder"):
        version("A").save(tmp_path / "steer")


def test_a_load_waits_for_a_save_that_is_running(tmp_path) -> None:
    """A save holds the folder's lock from its first change to its last; a load in that time waits, then reads."""
    import threading

    from intervenable.io.atomic import folder_lock

    folder = str(tmp_path / "steer")
    version("A").save(folder)
    seen: List[str] = []
    reader = threading.Thread(target=lambda: seen.append(loaded_version(folder)))
    with folder_lock(folder, exclusive=True):  # as a save into the folder holds it
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and seen == []
    reader.join(30)
    assert seen == ["A"]


def test_a_save_cleans_what_older_versions_left_beside_the_folder(tmp_path) -> None:
    """Before 0.1.1 a killed save left a hidden '.NAME.tmp-*' folder beside the saved one."""
    folder = tmp_path / "steer"
    version("A").save(folder)
    for leftover in (".steer.tmp-abc123", ".steer.tmp-zz"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / TENSORS_NAME).write_bytes(b"partial")
    (tmp_path / ".other.tmp-1").mkdir()  # another folder's leftover: not ours to remove
    version("B").save(folder)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-1", "steer"]
    assert loaded_version(str(folder)) == "B"
