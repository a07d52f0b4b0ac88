"""Atomic file writes: a crash never leaves a half-written result or checkpoint behind.

Temporary files and folders are named `.{target}.{pid}.…`: a write removes those of its target that a
killed process left behind (their process is gone), so they never pile up.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the temporary files and folders of `path` whose writer process is gone; return them."""
    removed = []
    prefix = f".{path.name}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
        owner = entry.name[len(prefix) :].split(".", 1)[0]
        if not owner.isdigit() or _process_alive(int(owner)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder that replaces `path` whole when the block succeeds and vanishes if it fails.

    Readers see the old folder, or no folder, or the complete new one; never a half-written one: the old
    folder is renamed aside, the new one renamed in, and only then is the old one deleted (if the second
    rename fails, the old folder is renamed back).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path)))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the folder is meant to be shared like any other
    aside: Path | None = None
    try:
        yield staging
        if path.exists():
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".old"))
            path.replace(aside)  # an empty folder is replaced
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None and aside.exists() and not path.exists():
            aside.rename(path)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
