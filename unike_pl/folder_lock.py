"""One run at a time per results folder: `folder/.lock`, held with an OS lock while the run writes there.

The operating system drops the lock when its process ends, however it ends, so a lock is never stale in
effect: the file's text (owner pid, host, start time) only names the owner for the message. A file that
still names an owner but is not locked was left by a run that was killed; the next run takes it over.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from unike_pl.errors import UserError

LOCK_FILE = ".lock"

_HELD: dict[Path, FolderLock] = {}
"""The locks this process holds, by file: a run that stopped on an exception never released its lock,
and a later run in the same process (a notebook, a test) takes it back."""


class FolderBusy(UserError):
    """Another live run holds the folder's lock."""


class FolderLock:
    """Exclusive use of `folder` by this process, from `acquire` to `release` (or the process's end).

    The file stays in place when released (emptied): removing it would let two runs lock different files
    of the same name. Runs in one process follow each other, so a lock this process still holds from an
    earlier run is handed over to the new one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.file = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self.held:
            return
        earlier = _HELD.get(self.file.resolve())
        if earlier is not None:
            earlier.release()
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(
                f"{self.file.parent}: another run is writing here ({describe(read_owner(self.file))}); "
                "wait for it to finish, or give this run another folder"
            ) from None
        previous = read_owner(self.file)
        if previous:
            warnings.warn(
                f"{self.file}: taking over the lock of a run that ended without releasing it "
                f"({describe(previous)})",
                RuntimeWarning,
                stacklevel=2,
            )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd
        _HELD[self.file.resolve()] = self
        atexit.register(self.release)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file: released, not left by a killed run
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        _HELD.pop(self.file.resolve(), None)
        atexit.unregister(self.release)


def read_owner(file: Path) -> dict[str, object]:
    """The owner a lock file names, {} for an empty (released) or unreadable one."""
    try:
        owner = json.loads(file.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def describe(owner: dict[str, object]) -> str:
    if not owner:
        return "its owner is not recorded"
    return f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"
