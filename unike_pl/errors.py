"""Errors in what the user gave the run (data, settings, files): the command line prints their message on
one line and exits with `USER_ERROR_EXIT`; a traceback is a bug's, or shown on request (`--debug`)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

USER_ERROR_EXIT = 2
"""Exit code of a run stopped by a user error (as for a command-line usage error)."""

DEBUG_FLAG = "--debug"

T = TypeVar("T")


class UserError(ValueError):
    """Something the user gave is wrong; the message names the file, record, field or setting."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist; the message says how to make it."""


def read_torch_file(path: str | Path, what: str, **load_args: Any) -> Any:
    """`torch.load` of a file that should hold `what` (weights only), failing with a message that names
    the file and what it should have been instead of the reader's own words."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path} does not exist: expected {what}")
    try:
        return torch.load(path, weights_only=True, **load_args)
    except Exception as error:  # the reader's errors: EOFError, RuntimeError(zip), UnpicklingError, ...
        raise UserError(
            f"{path}: cannot be read as {what} ({type(error).__name__}: {error}); the file is truncated or "
            "of another kind: write it again"
        ) from error


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point: a `UserError` prints `error: <message>` and exits `USER_ERROR_EXIT`, with the
    traceback only when the command line has `--debug` (which is taken off before `main` sees it)."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        debug = DEBUG_FLAG in sys.argv
        if debug:
            sys.argv.remove(DEBUG_FLAG)
        try:
            return main(*args, **kwargs)
        except UserError as error:
            if debug:
                raise
            print(f"error: {error}  (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    return wrapped
