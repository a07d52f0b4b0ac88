"""Real factual questions for text locality (MMEdit's `loc` / `loc_ans` form), read from JSON Lines.

A real language model's text locality is only meaningful on questions it answers correctly before any
edit: `python -m unike_pl.factual` keeps those of a candidate file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from unike_pl.errors import MissingFile, UserError

FIELDS = ("loc", "loc_ans")


def read_questions(file: str | Path) -> list[dict[str, str]]:
    """The question/answer pairs of a JSON Lines file, one object with `loc` and `loc_ans` per line."""
    file = Path(file)
    if not file.is_file():
        raise MissingFile(f"factual question file {file} does not exist")
    questions = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{file}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise UserError(f"{file}, line {number}: expected an object, found a {type(item).__name__}")
        for field in FIELDS:
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise UserError(f"{file}, line {number}, field {field!r}: missing or not a non-empty string")
        questions.append({field: item[field] for field in FIELDS})
    if not questions:
        raise UserError(f"{file}: holds no questions")
    return questions


def questions_digest(questions: list[dict[str, str]]) -> str:
    """sha256 of the pairs (not of the file's bytes): what a world generated from them depends on."""
    return hashlib.sha256(json.dumps(questions, sort_keys=True).encode()).hexdigest()


def to_jsonl(questions: list[dict[str, str]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in questions)
