"""Durable, all-or-nothing writes: stage, fsync, rename, fsync the folder. Every writer in selectune uses these.

A reader sees the old file (or folder) or the whole new one, never half; after a crash (power loss included)
the new one is there whole or not at all, because a rename is durable only once its folder is fsynced.

- ``atomic_write_bytes`` / ``atomic_write_json``: one file.
- ``staged_file``: one file written by a library that takes a path (safetensors ``save_file``).
- ``staged_folder``: a whole folder (a run, a report, a merged model), renamed into place at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries (a rename is durable only once its folder is fsynced), to disk."""
    if os.name != "posix" and Path(path).is_dir():
        return  # folders cannot be opened for fsync on Windows; NTFS journals renames itself
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)  # os.umask can only be read by setting it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder to write; on success fsync it, rename it to ``path``, fsync the folder.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the mode open() would, so reviewers can read it
        os.close(fd)
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file beside it: readers see old or new, never half."""
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, sort_keys=True, indent=2, default=str) + "\n").encode())


def replace_folder(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync every file and folder under ``staged``, then rename it to ``target`` (replacing one there) and fsync
    ``target``'s folder, so the renamed folder is durable with all its contents."""
    staged, target = Path(staged), Path(target)
    for folder, _, files in os.walk(staged, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staged, target)
        fsync_path(target.parent)
        return
    # os.replace cannot rename a folder onto a non-empty one: the old one goes aside first and is deleted only once
    # the new one is in place (a failure in between puts it back).
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside, target)
        raise
    fsync_path(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


OWNER_FILE = ".selectune-output"
"""Marker a command writes into its output folder, so that its ``--overwrite`` deletes only folders it wrote itself."""


def check_owned(target: str | os.PathLike, owner: str) -> None:
    """Refuse to replace an existing ``target`` that ``owner`` (a command, e.g. ``selectune report``) did not write."""
    target = Path(target)
    if not target.exists():
        return
    marker = target / OWNER_FILE
    written_by = marker.read_text(encoding="utf-8").strip() if target.is_dir() and marker.is_file() else None
    if written_by != owner:
        raise FileExistsError(f"{target} was not written by `{owner}` (no {OWNER_FILE} of it inside), so --overwrite will not "
                              "delete it; choose another folder, or remove it yourself if it really is to go.")


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, *, keep_existing: bool = False, owner: str | None = None) -> Iterator[Path]:
    """Yield an empty folder ``.{name}.partial-{pid}`` beside ``target`` to write into; when the block ends without
    an exception it is fsynced and renamed to ``target``. On any exception it is removed and ``target`` is untouched.

    An existing ``target`` is replaced, or, with ``keep_existing``, kept and the staged folder dropped (another
    process built the same content meanwhile). Whether an existing ``target`` may be replaced at all is the
    caller's decision, made before staging. With ``owner`` (the command writing it), an existing ``target`` is
    replaced only if that command wrote it (``check_owned``), and the new folder is marked as written by it.
    """
    target = Path(target)
    if owner is not None:
        check_owned(target, owner)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # left by a dead process that had our pid
    partial.mkdir(parents=True)
    try:
        if owner is not None:
            (partial / OWNER_FILE).write_text(owner + "\n", encoding="utf-8")
        yield partial
        if not (keep_existing and target.exists()):
            replace_folder(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
