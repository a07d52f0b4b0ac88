"""Forward hooks as context managers: registered on entry, always removed on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def capture_output(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict whose "output" entry holds `module`'s latest forward output while the block runs."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_: nn.Module, __: Any, output: torch.Tensor) -> None:
        captured["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
