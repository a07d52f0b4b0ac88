"""One plain progress line: how far a long loop is, its time per step and the time left."""

from __future__ import annotations

import sys
import time


def progress_line(label: str, done: int, total: int, started: float) -> str:
    """`label done/total: x s each, y min left`, from the `time.monotonic()` the loop started at."""
    seconds = (time.monotonic() - started) / max(done, 1)
    return f"{label} {done}/{total}: {seconds:.2f} s each, {seconds * (total - done) / 60:.1f} min left"


def piped() -> bool:
    """Whether stdout goes to a file or a pipe (a progress bar draws nothing there until it ends)."""
    return not sys.stdout.isatty()
