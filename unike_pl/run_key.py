"""The run key: one hash over everything a result depends on, kept with its readable parts.

A result or cache folder holds the key it was made under (`run_key.json`); a run under another key is
refused with the parts that differ, so changed weights, data, images or settings never reuse old results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from unike_pl.errors import UserError
from unike_pl.io import atomic_write_json

KEY_FILE = "run_key.json"
SHOWN_DIFFERENCES = 8


def plain(value: Any, skip: Iterable[str] = (), prefix: str = "") -> Any:
    """`value` as JSON values (dataclasses and mappings as objects, paths as strings), leaving out the
    dotted names in `skip` and names that start with `_` (LightningCLI's own)."""
    skip = frozenset(skip)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {
            str(name): plain(item, skip, f"{prefix}{name}.")
            for name, item in value.items()
            if not str(name).startswith("_") and f"{prefix}{name}" not in skip
        }
    if isinstance(value, list | tuple):
        return [plain(item, skip, prefix) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the leaves where `old` and `new` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            name
            for key in sorted(set(old) | set(new))
            for name in differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".") or "(the whole key)"]


@dataclasses.dataclass(frozen=True)
class RunKey:
    """Named parts (hashes of files and weights, settings), each JSON; the key is the hash of them all."""

    parts: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", plain(self.parts))

    @property
    def digest(self) -> str:
        return digest(self.parts)

    def summary(self) -> dict[str, Any]:
        """What result files record: the key and the hash of each part."""
        return {"digest": self.digest, "parts": {name: digest(part) for name, part in self.parts.items()}}

    def claim(self, folder: str | Path, contents: str) -> None:
        """Write this key into `folder`, or check the key already there: a folder made under another key,
        or holding files but no key, is refused naming what differs. `contents` names what the folder
        holds, for the message."""
        folder = Path(folder)
        file = folder / KEY_FILE
        if file.is_file():
            try:
                stored = json.loads(file.read_text())["parts"]
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"{file}: not a run key ({error}); delete {folder} or use another") from None
            changed = differences(stored, self.parts)
            if changed:
                hidden = len(changed) - SHOWN_DIFFERENCES
                shown = ", ".join(changed[:SHOWN_DIFFERENCES]) + (f" and {hidden} more" if hidden > 0 else "")
                raise UserError(
                    f"{file}: the {contents} in this folder were made under another run key ({shown} "
                    "differ); point the run at a new folder, or delete this one to redo them"
                )
            return
        if folder.is_dir() and any(not entry.name.startswith(".") for entry in folder.iterdir()):
            raise UserError(
                f"{folder}: holds {contents} but no {KEY_FILE} (made by an older version, or not by this "
                "project): point the run at a new folder, or delete this one"
            )
        atomic_write_json(file, {"digest": self.digest, "parts": self.parts})
