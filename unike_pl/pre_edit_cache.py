"""Pre-edit predictions on disk (METHOD.md §3): the unedited model's top-k ids on the locality inputs,
computed once and reused by every later run, method and protocol on the same model and data."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unike_pl.errors import UserError
from unike_pl.io import atomic_write_bytes, atomic_write_json

KEY_FILE = "key.json"


def _compact(ids: Any) -> Any:
    """int32 on the CPU, for a tensor or a list of tensors (None kept)."""
    if isinstance(ids, list):
        return [None if i is None else _compact(i) for i in ids]
    return ids.to(torch.int32).cpu()


class PreEditCache:
    """One file per batch of records under `root/<hash of key>/`; `key` names everything the predictions
    depend on (the model's fingerprint, the data files' hashes, the prompt settings, k), and is written
    beside them as `key.json`."""

    def __init__(self, root: str | Path, key: Mapping[str, Any]) -> None:
        text = json.dumps(dict(key), sort_keys=True, default=str)
        self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        if not (self.folder / KEY_FILE).is_file():
            atomic_write_json(self.folder / KEY_FILE, json.loads(text))

    def path(self, records: Sequence[int]) -> Path:
        return self.folder / f"records_{records[0]:06d}_{len(records):03d}.pt"

    def predictions(
        self, records: Sequence[int], compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The cached predictions of exactly these records, or `compute()`'s, which are then cached."""
        file = self.path(records)
        if file.is_file():
            try:
                payload = torch.load(file, weights_only=True)
            except Exception as error:  # a cache of a deterministic computation: compute it again
                warnings.warn(
                    f"{file}: cannot be read ({error}); computed again", RuntimeWarning, stacklevel=2
                )
            else:
                if payload["records"] != list(records):
                    raise UserError(f"{file}: holds records {payload['records']}, expected {list(records)}")
                return payload["topk"]
        topk = {case: _compact(ids) for case, ids in compute().items()}
        buffer = io.BytesIO()
        torch.save({"records": list(records), "topk": topk}, buffer)
        atomic_write_bytes(file, buffer.getvalue())
        return topk
