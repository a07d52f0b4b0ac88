"""Read MMEdit files (E-VQA and E-IC) with the real field names, and fail loudly on bad input.

Every error names the file, the record index and the field. Records with an empty `alt` are skipped
with one counted warning per file, as the benchmark's own loaders skip them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unike_pl.errors import MissingFile, UserError
from unike_pl.mmedit_fields import GROUP_FIELD, IMAGE_FIELDS, TASKS, TEXT_FIELDS

MAY_BE_EMPTY = ("pred", "alt")  # `pred` is never scored; an empty `alt` makes the record skippable


class MMEditFormatError(UserError):
    """Bad MMEdit input; the message starts with file, record index and field."""

    def __init__(self, file: str | Path, message: str, record: int | None = None, field: str | None = None):
        where = str(file)
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.file, self.record, self.field = str(file), record, field


class MMEditWarning(UserWarning):
    """Skipped records or a poor locality pool in an MMEdit file."""


@dataclass(frozen=True)
class QuestionAnswer:
    question: str
    answer: str


@dataclass(frozen=True)
class HardLocality:
    """An out-of-scope input close to the edit (LDKE): same image + other question, or similar scene."""

    image: Path
    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class EditRecord:
    """One MMEdit record, image paths resolved against their roots."""

    index: int
    src: str
    pred: str
    alt: str
    rephrase: str
    image: Path
    image_rephrase: Path
    loc: str
    loc_ans: str
    m_loc: Path
    m_loc_q: str
    m_loc_a: str
    related: tuple[QuestionAnswer, ...] = ()
    hard_loc: tuple[HardLocality, ...] = ()
    group: str | None = None
    """The labelled group of the edit (`group` field), None when the record has none."""


@dataclass(frozen=True)
class MMEditSplit:
    file: Path
    task: str
    records: tuple[EditRecord, ...]
    skipped_empty_alt: int


def under_root(root: str | Path, path: str) -> str:
    """`path` inside the dataset folder `root`: a relative path is joined to it, an absolute one is kept
    (so one `root` moves a whole config's data, and any single path can still point elsewhere)."""
    if str(root) in ("", ".") or Path(path).is_absolute():
        return path
    return str(Path(root) / path)


def read_mmedit(
    file: str | Path,
    task: str,
    image_root: str | Path,
    rephrase_image_root: str | Path,
    check_images: bool = True,
    allow_outside_roots: bool = False,
) -> MMEditSplit:
    """Read one MMEdit JSON list and validate every record.

    Image paths are relative to their root; an absolute one or one with `..` (which would read a file
    outside the configured roots) is refused unless `allow_outside_roots`. With `check_images` off the
    images are neither checked nor meant to be read."""
    file = Path(file)
    if task not in TASKS:
        raise UserError(f"task must be one of {TASKS}, not {task!r}")
    roots = {"image_root": Path(image_root), "rephrase_image_root": Path(rephrase_image_root)}
    for name, root in roots.items():
        if check_images and not root.is_dir():
            raise MissingFile(f"{name} {root} (for {file}) is not a folder")
    raw = _load_json_list(file)
    records, skipped = [], 0
    for index, item in enumerate(raw):
        record = _parse_record(file, index, item, roots, _ImageCheck(check_images, allow_outside_roots))
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        warnings.warn(
            f"{file}: skipped {skipped} of {len(raw)} records with an empty 'alt'",
            MMEditWarning,
            stacklevel=2,
        )
    if not records:
        raise MMEditFormatError(file, "no usable records")
    if len({r.loc for r in records}) <= 2:
        warnings.warn(
            f"{file}: only {len({r.loc for r in records})} distinct 'loc' questions; text locality "
            "measured on this pool says little",
            MMEditWarning,
            stacklevel=2,
        )
    return MMEditSplit(file, task, tuple(records), skipped)


def _load_json_list(file: Path) -> list[Any]:
    if not file.is_file():
        raise MissingFile(f"MMEdit file {file} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MMEditFormatError(
            file, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError as error:
        raise MMEditFormatError(file, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(data, list):
        raise MMEditFormatError(file, f"expected a JSON list of records, found a {type(data).__name__}")
    return data


def _text(file: Path, index: int, item: Mapping[str, Any], field: str) -> str:
    if field not in item:
        raise MMEditFormatError(file, "missing", index, field)
    value = item[field]
    if not isinstance(value, str):
        raise MMEditFormatError(file, f"expected a string, found {type(value).__name__}", index, field)
    if not value.strip() and field not in MAY_BE_EMPTY:
        raise MMEditFormatError(file, "empty", index, field)
    return value.strip()


@dataclass(frozen=True)
class _ImageCheck:
    exists: bool
    """Check that every image file exists (and lies inside its root)."""
    outside_allowed: bool


def _image_path(
    file: Path, index: int, field: str, root: Path, name: str, check: _ImageCheck, where: str = ""
) -> Path:
    """`root / name`, refused where `name` leaves the root, or where the file is missing."""
    relative = Path(name)
    if check.exists and not check.outside_allowed and (relative.is_absolute() or ".." in relative.parts):
        raise MMEditFormatError(
            file,
            f"{where}image path {name!r} leads outside its root {root} (absolute, or with '..'); "
            "set allow_outside_roots to read it",
            index,
            field,
        )
    path = root / relative
    if check.exists and not path.is_file():
        raise MMEditFormatError(file, f"{where}image {path} does not exist", index, field)
    return path


def _image(
    file: Path, index: int, item: Mapping[str, Any], field: str, root: Path, check: _ImageCheck
) -> Path:
    return _image_path(file, index, field, root, _text(file, index, item, field), check)


def _parse_record(
    file: Path, index: int, item: Any, roots: Mapping[str, Path], check: _ImageCheck
) -> EditRecord | None:
    if not isinstance(item, dict):
        raise MMEditFormatError(file, f"expected a JSON object, found {type(item).__name__}", index)
    text = {field: _text(file, index, item, field) for field in TEXT_FIELDS}
    if not text["alt"]:
        return None
    images = {
        field: _image(file, index, item, field, roots[root], check) for field, root in IMAGE_FIELDS.items()
    }
    return EditRecord(
        index=index,
        **text,
        **images,
        related=_related(file, index, item),
        hard_loc=_hard_locality(file, index, item, roots["image_root"], check),
        group=_group(file, index, item),
    )


def _group(file: Path, index: int, item: Mapping[str, Any]) -> str | None:
    """The optional group label; it becomes part of logged metric names (`val/<group>/reliability`)."""
    if GROUP_FIELD not in item:
        return None
    value = item[GROUP_FIELD]
    if not isinstance(value, str):
        raise MMEditFormatError(file, f"expected a string, found {type(value).__name__}", index, GROUP_FIELD)
    if not value.strip():
        raise MMEditFormatError(file, "empty", index, GROUP_FIELD)
    if "/" in value:
        raise MMEditFormatError(
            file, f"{value!r} contains '/', which separates logged metric names", index, GROUP_FIELD
        )
    return value.strip()


def _entries(
    file: Path, index: int, item: Mapping[str, Any], field: str, keys: tuple[str, ...]
) -> list[dict]:
    """The optional list-of-objects fields of the embedded world (absent from MMEdit itself)."""
    entries = item.get(field, [])
    if not isinstance(entries, list):
        raise MMEditFormatError(file, "expected a list", index, field)
    for position, entry in enumerate(entries):
        for key in keys:
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str) or not entry[key].strip():
                raise MMEditFormatError(
                    file, f"entry {position} needs a non-empty string {key!r}", index, field
                )
    return entries


def _related(file: Path, index: int, item: Mapping[str, Any]) -> tuple[QuestionAnswer, ...]:
    return tuple(
        QuestionAnswer(e["q"].strip(), e["a"].strip())
        for e in _entries(file, index, item, "related", ("q", "a"))
    )


def _hard_locality(
    file: Path,
    index: int,
    item: Mapping[str, Any],
    root: Path,
    check: _ImageCheck,
) -> tuple[HardLocality, ...]:
    cases = []
    for position, entry in enumerate(_entries(file, index, item, "hard_loc", ("image", "q", "a", "kind"))):
        path = _image_path(file, index, "hard_loc", root, entry["image"], check, f"entry {position}: ")
        cases.append(HardLocality(path, entry["q"].strip(), entry["a"].strip(), entry["kind"]))
    return tuple(cases)
