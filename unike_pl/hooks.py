"""Forward hooks as context managers: registered on entry, always removed on exit.

Every part of the project that hooks a module (neurons, knowledge injection, state capture, the tail
runner, localization, MEND) registers through `hooks()`, so that no handle can outlive its block:

    with hooks() as attached:
        attached.pre(attention, read_input, with_kwargs=True)
        attached.post(ffn_value, add_patch)
        model(batch)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """The hooks registered inside one `hooks()` block."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def pre(self, module: nn.Module, hook: Callable[..., Any], with_kwargs: bool = False) -> None:
        """Run `hook` before `module`'s forward (it may return new args, or (args, kwargs))."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def post(self, module: nn.Module, hook: Callable[..., Any], with_kwargs: bool = False) -> None:
        """Run `hook` after `module`'s forward (it may return a replacement output)."""
        self._handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def hooks() -> Iterator[HookSet]:
    """A `HookSet` whose hooks are all removed when the block exits, however it exits."""
    attached = HookSet()
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
