"""Model surgery for editing (no Lightning here): extra neurons, latent knowledge, the tail runner.

The exports are imported on first use, so that torch-free submodules (`ike_format`, which the world
generator uses) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IntrinsicConfig": "unike_pl.editing.editor",
    "UniKEEditor": "unike_pl.editing.editor",
    "LatentConfig": "unike_pl.editing.latent",
}

__all__ = ["IntrinsicConfig", "LatentConfig", "UniKEEditor"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
