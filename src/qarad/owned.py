"""Folders qarad made: a marker that says so, a lock against a second writer, and removal of
qarad's own files only.

Every verb that creates an output folder marks it (OUT/.qarad names the kind of folder), so that
a later verb replaces or deletes only what qarad itself wrote, and never a user's folder that
happens to hold a file of the same name. A writer holds OUT/.qarad.lock (filelock) while it
writes, so a second process is refused at once, naming the folder, instead of interleaving its
writes with the first one's (issue "Nothing lost, nothing crashes", case 6).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from filelock import FileLock, Timeout

from .data.io import make_folder, write_json

MARKER = ".qarad"
LOCK = ".qarad.lock"
BOOKKEEPING = ".qarad"  # the marker and every lock (.qarad*.lock) start so
KINDS = ("run", "synth", "model", "predictions", "demo", "benchmark")


class FolderError(ValueError):
    """An output folder qarad may not write into now: foreign, or busy with another process."""


def is_bookkeeping(name: str) -> bool:
    """The marker or a lock: they never make a folder "not empty" on their own."""
    return name == MARKER or (name.startswith(BOOKKEEPING) and name.endswith(".lock"))


def entries(folder: str | os.PathLike) -> list[Path]:
    """What `folder` holds besides qarad's marker and lock (nothing when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not is_bookkeeping(p.name))


def is_empty(folder: str | os.PathLike) -> bool:
    return not entries(folder)


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Record that qarad made `folder` as a `kind` folder (kept when already marked so)."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    if kind_of(folder) != kind:
        write_json(Path(folder) / MARKER, {"kind": kind})


def kind_of(folder: str | os.PathLike) -> str | None:
    """The kind qarad marked `folder` with; None for a folder qarad did not mark."""
    path = Path(folder) / MARKER
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 4096:
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return None
    return kind if kind in KINDS else None


@contextmanager
def writing(folder: str | os.PathLike, what: str, name: str = LOCK) -> Iterator[Path]:
    """Hold `folder`'s writer lock (created if needed) for the block; refuse when another process
    holds it. `name` lets one folder have separate locks (a synth shard's own manifest)."""
    folder = make_folder(folder)
    path = folder / name
    new = not path.exists()
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderError(f"{folder}: another qarad process is writing it ({what}); wait for it to finish, "
                          "or choose another folder") from None
    try:
        yield folder
    finally:
        lock.release()
        if new and folder.is_dir() and kind_of(folder) is None:  # refused: leave a user's folder as it was
            path.unlink(missing_ok=True)


def remove_own(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the files `names` (relative to `folder`) that qarad wrote there, and then any of their
    folders left empty; nothing else in `folder` is touched. Returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
    for name in names:  # a qarad sub-folder (state/) goes only once nothing foreign is in it
        parent = (folder / name).parent
        while parent != folder and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed
