"""Atomic saves into a folder that stays an ordinary folder.

A saved folder ``D`` holds its files at the top level, like any folder a user
copies or uploads. While a save runs, and after one is killed, ``D`` may also hold:

- ``D/.intervenable-staging-XXXXXXXX/``: a version being written. Never read;
  removed by the next save.
- ``D/.intervenable-commit/``: a *complete* new version whose files are being
  moved into ``D``. Its appearance (one ``rename``) is the commit point.

A save: (1) lock ``D`` (``flock``, released by the kernel if the process dies),
finish a commit that a killed save left (move its files into ``D``) and remove
staging leftovers; (2) write every file into a fresh staging folder, give the
files the modes the umask allows, ``fsync`` them and the folder; (3) rename the
staging folder to ``.intervenable-commit`` and ``fsync`` ``D``: committed;
(4) ``os.replace`` each file into ``D``, ``fsync``, remove the empty commit folder.

The reading rule (``current_file``): a file is read from ``.intervenable-commit/``
when it is there, else from ``D``. Before step 3 every file read is the old
version's; from step 3 on, each file of the new version is in one place or the
other (``os.replace`` is atomic), so a reader sees the old or the new version
whenever the writer is stopped.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, List, Optional

from .common import SerializationError

STAGING_PREFIX = ".intervenable-staging-"
COMMIT_NAME = ".intervenable-commit"


def after_step(step: str) -> None:
    """Called after every change on disk during a save; a no-op that tests replace to stop the process there."""


# -- paths --------------------------------------------------------------------------
def save_target(path: Any, what: str = "save_directory") -> str:
    """The folder path to save into: ``~`` expanded; an empty or non-path value refused."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise SerializationError(f"{what} must be a folder path (str or pathlib.Path); got {type(path).__name__}.")
    path = os.fsdecode(os.fspath(path))
    if not path.strip():
        raise SerializationError(
            f"{what} is empty: give the folder to save into, e.g. save('my-intervention') (save('.') saves into "
            "the current folder)."
        )
    return os.path.expanduser(path)


def current_file(folder: str, name: str) -> str:
    """Where the current version's file ``name`` is: in a commit not yet moved into place, else in ``folder``."""
    pending = os.path.join(folder, COMMIT_NAME, name)
    return pending if os.path.isfile(pending) else os.path.join(folder, name)


def interrupted(folder: str) -> bool:
    """Whether ``folder`` holds what an interrupted save leaves (a staging or commit folder)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return False
    return any(e == COMMIT_NAME or e.startswith(STAGING_PREFIX) for e in entries)


@contextlib.contextmanager
def folder_lock(folder: str, exclusive: bool) -> Iterator[None]:
    """An advisory ``flock`` on ``folder`` (shared to read, exclusive to save); none where unsupported."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock
        fcntl = None  # type: ignore[assignment]
    fd: Optional[int] = None
    if fcntl is not None:
        try:
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # a filesystem without locks: go on unlocked
            pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


# -- modes and durability -------------------------------------------------------------
def umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str) -> None:
    """Flush a file or folder to disk (folders: their entries); silently skipped where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- one file ------------------------------------------------------------------------
TEMPORARY_PREFIX = ".tmp-"


def replace_file(folder: str, name: str, write: Callable[[str], Any],
                 step: Optional[Callable[[str], None]] = None) -> None:
    """``write(tmp)`` into this process's temporary ``.tmp-{pid}-{name}`` (it keeps ``name``'s extension,
    which may say the format), flush it, rename it to ``folder/name`` and flush the folder: the file appears
    complete or not at all. ``step(what)`` runs after each change on disk (kill tests stop the process
    there); a ``write`` that raises leaves no temporary file."""
    tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{os.getpid()}-{name}")
    try:
        write(tmp)
        if step is not None:
            step(f"wrote {name}")
        fsync_path(tmp)
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if step is not None:
        step(f"renamed {name}")
    fsync_path(folder)
    if step is not None:
        step(f"flushed {name}")


def remove_temporaries(folder: str, names: List[str], step: Optional[Callable[[str], None]] = None) -> None:
    """The temporary files that killed ``replace_file`` calls for ``names`` left, never anything else. Only for
    names this process alone writes: another live writer's temporary file would go too."""
    for entry in os.listdir(folder):
        if entry.startswith(TEMPORARY_PREFIX) and any(entry.endswith(f"-{n}") for n in names):
            os.remove(os.path.join(folder, entry))
            if step is not None:
                step(f"removed {entry}")


def _seal(staging: str, names: List[str]) -> None:
    """Give the written files and their folder ordinary modes (as the umask allows) and flush them."""
    mask = umask()
    for name in names:
        path = os.path.join(staging, name)
        os.chmod(path, 0o666 & ~mask)
        fsync_path(path)
        after_step(f"sealed {name}")
    os.chmod(staging, 0o777 & ~mask)
    fsync_path(staging)
    after_step("staging folder sealed")


# -- the protocol ---------------------------------------------------------------------
def _finish_commit(folder: str, names: Optional[List[str]] = None) -> None:
    """Move a committed version's files into ``folder`` and remove the emptied commit folder."""
    commit = os.path.join(folder, COMMIT_NAME)
    for name in names if names is not None else sorted(os.listdir(commit)):
        source = os.path.join(commit, name)
        if os.path.lexists(source):
            os.replace(source, os.path.join(folder, name))
            after_step(f"moved {name}")
    fsync_path(folder)
    after_step("moves flushed")
    os.rmdir(commit)
    after_step("commit folder removed")
    fsync_path(folder)


def _recover(folder: str) -> None:
    """Clean what killed saves left: finish a commit (it is the current version), drop staging folders."""
    if os.path.isdir(os.path.join(folder, COMMIT_NAME)):
        _finish_commit(folder)
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
            after_step(f"removed {entry[: len(STAGING_PREFIX)]}*")
    # Versions before 0.1.1 staged beside the folder, as ".NAME.tmp-*": a killed save left one behind.
    parent, name = os.path.split(folder)
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if entry.startswith(f".{name}.tmp-") and os.path.isdir(os.path.join(parent, entry)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _create_folder(folder: str) -> bool:
    """Create ``folder`` (and parents) if needed; True when this call created it."""
    if os.path.isdir(folder):
        return False
    if os.path.lexists(folder):
        raise SerializationError(f"{folder!r} exists and is not a folder: give a folder path to save into.")
    try:
        os.makedirs(folder)
    except FileExistsError:
        return False
    except OSError as exc:
        raise SerializationError(
            f"Could not create the folder {folder!r} ({exc.strerror or exc}). Save into a folder you can write to, "
            "or create it first."
        ) from None
    fsync_path(os.path.dirname(folder))
    after_step("folder created")
    return True


def atomic_write_folder(directory: str, write: Callable[[str], List[str]]) -> None:
    """Write a new version of the saved folder ``directory``; readers see the old or the new one, always.

    ``write(staging)`` writes the files into an empty staging folder and returns
    their names (data first, config last). Other files in ``directory`` are kept.
    """
    folder = os.path.abspath(directory)
    created = _create_folder(folder)
    staging: Optional[str] = None
    committed = False
    try:
        with folder_lock(folder, exclusive=True):
            _recover(folder)
            staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
            after_step("staging folder created")
            names = write(staging)
            after_step("files written")
            _seal(staging, names)
            os.rename(staging, os.path.join(folder, COMMIT_NAME))
            committed = True
            after_step("committed")
            fsync_path(folder)
            after_step("commit flushed")
            _finish_commit(folder, names)
    except BaseException as exc:
        if not committed:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only if still empty: never remove what someone else put there
        if isinstance(exc, OSError):
            where = (" (the new version is complete and loads; the next save finishes moving it into place)"
                     if committed else " (the previous version, if any, is unchanged)")
            raise SerializationError(
                f"Could not write the saved intervention into {folder!r}: {exc.strerror or exc}{where}. Check that "
                "you can write to that folder and that the disk has space, or save somewhere else."
            ) from None
        raise
