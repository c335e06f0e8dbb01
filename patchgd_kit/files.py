"""Writing files so that a kill or a full disk never leaves a half-written one, and one process at a time.

- ``atomic_write``: write a temporary sibling, then rename it over the target. A failed write raises
  an OSError that names the target (not the temporary file) and leaves the target as it was.
- ``locked``: an exclusive lock on a file next to what is being made (a run folder, a dataset
  split). A second process gets a KitError naming the holder; a lock left by a killed process is
  free (the kernel drops flock locks with their process), so the next run takes it over.
- ``building``: make a folder under a temporary hidden name and rename it at the end, so it is
  complete or absent; leftovers of killed builds are removed.
- ``content_hash``: the one hash of a JSON-able value (run keys, planner caches): sha256, hex.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import KitError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it to `path`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:  # name the target, not the temporary file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_text(path: Path, text: str) -> None:
    """`text` into `path` atomically, its folder made first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def content_hash(value, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `value` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def save_torch(path: Path, obj) -> None:
    """torch.save, atomically; a failed write (disk full) raises the OSError behind it."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as exc:  # torch wraps the file object's OSError in a RuntimeError
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise
    atomic_write(path, write)


def check_writable_folder(folder: Path) -> None:
    """Make `folder` (and its parents) and check that files can be made in it; raises the OSError
    (not a folder, permission, read-only file system) naming the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
    except OSError as exc:  # name the folder, not the probe's temporary name
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc
    os.close(fd)
    os.unlink(probe)


def check_writable_file(path: Path) -> None:
    """Check, before any work, that a file can be written at `path` (its folder is made)."""
    path = Path(path)
    if path.is_dir():
        raise KitError(f"{path} is a folder; allowed: the path of a file to write")
    try:
        check_writable_folder(path.parent)
    except OSError as exc:  # name the file asked for
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _holder(path: Path) -> str:
    try:
        return f"process {int(path.read_text())}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if absent) while `what` is made."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KitError(f"{_holder(path)} is already {what} (lock {path}); wait for it to finish, "
                           "or stop it, then rerun") from None
        # The previous holder removes the file as it lets go: a lock on a removed file protects
        # nothing, so start again on the current one.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of `final` to fill; it is renamed to `final` when the block
    ends and removed if the block fails. Call it holding a lock on `final`: any other partial
    folder of `final` is a killed build's leftover, and is removed first."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
