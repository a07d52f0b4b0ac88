"""Forward hooks as context managers: registered on entry, always removed on exit.

Every part of the project that hooks a module (neurons, knowledge injection, state capture, the tail
runner, localization, MEND) registers through `hooks()`, so that no handle can outlive its block:

    with hooks() as attached:
        attached.pre(attention, read_input, with_kwargs=True)
        attached.post(ffn_value, add_patch)
        model(batch)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_paused = 0
"""Depth of `paused()` blocks: while > 0, pausable hooks let every forward pass unchanged."""


@contextmanager
def paused() -> Iterator[None]:
    """Every pausable hook (the default) does nothing while the block runs: the model computes as if no
    edit were attached, e.g. to read the unedited states of an input inside an edited forward."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


class HookSet:
    """The hooks registered inside one `hooks()` block."""

    def __init__(self, pausable: bool = True) -> None:
        self._handles: list[RemovableHandle] = []
        self.pausable = pausable

    def pre(self, module: nn.Module, hook: Callable[..., Any], with_kwargs: bool = False) -> None:
        """Run `hook` before `module`'s forward (it may return new args, or (args, kwargs))."""
        self._handles.append(module.register_forward_pre_hook(self._wrap(hook), with_kwargs=with_kwargs))

    def post(self, module: nn.Module, hook: Callable[..., Any], with_kwargs: bool = False) -> None:
        """Run `hook` after `module`'s forward (it may return a replacement output)."""
        self._handles.append(module.register_forward_hook(self._wrap(hook), with_kwargs=with_kwargs))

    def _wrap(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        if not self.pausable:
            return hook

        @functools.wraps(hook)
        def unless_paused(*args: Any, **kwargs: Any) -> Any:
            return None if _paused else hook(*args, **kwargs)  # None: args / output unchanged

        return unless_paused

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def hooks(pausable: bool = True) -> Iterator[HookSet]:
    """A `HookSet` whose hooks are all removed when the block exits, however it exits. Its hooks pause
    inside `paused()` unless `pausable` is False (hooks that read a paused forward)."""
    attached = HookSet(pausable)
    try:
        yield attached
    finally:
        attached.remove()


@contextmanager
def capture_output(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict whose "output" entry holds `module`'s latest forward output while the block runs."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_: nn.Module, __: Any, output: torch.Tensor) -> None:
        captured["output"] = output

    with hooks() as attached:
        attached.post(module, hook)
        yield captured
