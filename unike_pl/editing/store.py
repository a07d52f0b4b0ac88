"""Per-edit results on disk: an interrupted `validate` reads finished edits back instead of redoing them."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unike_pl.errors import UserError
from unike_pl.io import atomic_write_json
from unike_pl.run_key import RunKey


class EditResultStore:
    """One JSON file per edited batch (one edit, or one sequence of T edits) under `folder`.

    The folder holds the run key its edits were made under; a run under another key is refused, so a
    changed model, checkpoint, data file, image or setting never silently reuses stale edits.
    """

    def __init__(self, folder: str | Path, key: RunKey) -> None:
        self.folder = Path(folder)
        key.claim(self.folder, "edits")

    def path(self, records: Sequence[int]) -> Path:
        return self.folder / f"records_{records[0]:06d}_{len(records):03d}.json"

    def load(self, records: Sequence[int], groups: Sequence[str | None]) -> dict[str, Any] | None:
        """The stored result of exactly these records (whose groups are `groups`), or None if they were not
        edited yet. A file written before records had groups holds none; its scores hold all the same."""
        file = self.path(records)
        if not file.is_file():
            return None
        problem = None
        try:
            result = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problem = f"not valid JSON ({error})"
        else:
            problem = stored_result_problem(result, len(records))
        if problem is not None:
            # A stored edit is a cache of a seeded computation: redoing it gives the same result.
            warnings.warn(f"{file}: {problem}; the edit is redone", RuntimeWarning, stacklevel=2)
            return None
        if result.get("records") != list(records):
            raise UserError(f"{file}: holds records {result.get('records')}, expected {list(records)}")
        if "groups" in result and result["groups"] != list(groups):
            raise UserError(
                f"{file}: holds records of groups {result['groups']}, but the data gives {list(groups)}; "
                "point `edits_dir` at a new folder or delete this one"
            )
        return result

    def save(
        self,
        records: Sequence[int],
        groups: Sequence[str | None],
        scores: Mapping[str, torch.Tensor],
        reports: Sequence[Mapping[str, Any]],
        immediate: Mapping[str, torch.Tensor] | None = None,
        gate: Mapping[str, Any] | None = None,
    ) -> None:
        result = {
            "records": list(records),
            "groups": list(groups),
            "scores": {key: values.tolist() for key, values in scores.items()},
            "immediate": {key: values.tolist() for key, values in (immediate or {}).items()},
            "edits": list(reports),
            **({"gate": gate} if gate is not None else {}),
        }
        atomic_write_json(self.path(records), result)


def stored_result_problem(result: Any, records: int) -> str | None:
    """What is wrong with a stored result of `records` records, or None: its fields, the shape of its
    scores (at most one per record; neighbour metrics skip records without neighbours) and their values
    (finite, in [0, 1])."""
    if not isinstance(result, dict):
        return f"expected a JSON object, found {type(result).__name__}"
    missing = [key for key in ("records", "scores", "edits") if key not in result]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(result["edits"], list) or len(result["edits"]) != records:
        return f"expected {records} edit reports"
    if not isinstance(result["scores"], dict) or not result["scores"]:
        return "no scores"
    for key, values in {**result["scores"], **result.get("immediate", {})}.items():
        if not isinstance(values, list) or len(values) > records:
            return f"{key}: expected at most {records} scores"
        if not all(isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1 for v in values):
            return f"{key}: a score that is not a number in [0, 1]"
    return None


def as_tensors(scores: Mapping[str, Sequence[float]]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(values, dtype=torch.float32) for key, values in scores.items()}
