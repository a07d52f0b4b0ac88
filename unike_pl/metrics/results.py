"""Result files: the scores of a run and the settings that produced them, as JSON and as CSV.

Numbers scored with different scorers or prompt templates are not comparable (METHOD.md §2-3), so every
result file names them: `write_results` refuses settings without `target_scorer`, `locality_scorer` and
`prompt_template`.

Layout of `{name}.json`::

    {"scores": {"reliability": 98.8, ...}, "settings": {"target_scorer": "token_accuracy", ...},
     "records": 300,                                                               (records scored)
     "diagnostics": {"gate_alpha": {"edit": {"5": 0.81, ..., "mean": 0.8}, ...}},   (optional)
     "scores_by_group": {"seen-rule": {"reliability": 99.1, ...}, ...},            (data with groups)
     "records_by_group": {"seen-rule": 150, ...}}                                  (data with groups)

Layout of `{name}.csv` (readable with the `csv` module); on data with groups, one more column per group
and each group's record count in the `records` row::

    metric,value[,seen-rule,unseen-rule]
    reliability,98.8[,99.1,98.5]
    ...
    records,300[,150,150]
    setting:target_scorer,token_accuracy[,,]
    ...

Score keys are metric keys from `names.py`, optionally with a stage prefix (`test/reliability`). Setting
values that are not strings are written to the CSV as JSON (`true`, `40`, `null`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unike_pl.io import atomic_write_json, atomic_write_text
from unike_pl.metrics.names import ALL_METRICS, RECORDS

REQUIRED_SETTINGS = ("target_scorer", "locality_scorer", "prompt_template")
"""Settings every result file must record."""

SETTING_PREFIX = "setting:"
"""Prefix of the settings rows in the CSV file."""


@dataclass(frozen=True)
class GroupScores:
    """The scores of each labelled group of records, keyed like the run's scores, and its record count."""

    scores: Mapping[str, Mapping[str, float]]
    """{group: {score key: score ×100}}."""
    records: Mapping[str, int]
    """{group: how many of its records were scored}."""


def _check_score_key(key: str) -> None:
    """Accept `metric` or `stage/metric` with a metric key from names.py."""
    stage, _, metric = key.rpartition("/")
    if metric not in ALL_METRICS or "/" in stage or (key.count("/") == 1 and not stage):
        raise ValueError(
            f"unknown score key {key!r}; use a metric key ({', '.join(ALL_METRICS)}) or 'stage/metric'"
        )


def _score_value(key: str, value: Any) -> float:
    """Return `value` (a number or a 0-d tensor) as a finite float."""
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"score {key!r} is not a number: {value!r}") from error
    if not math.isfinite(number):
        raise ValueError(f"score {key!r} is not finite: {number}")
    return number


def write_results(
    directory: str | Path,
    name: str,
    scores: Mapping[str, float],
    settings: Mapping[str, object],
    diagnostics: Mapping[str, object] | None = None,
    groups: GroupScores | None = None,
    records: int | None = None,
    partial: bool = False,
) -> tuple[Path, Path]:
    """Write `{name}.json` and `{name}.csv` into `directory` atomically; return (json path, csv path).

    Args:
        directory: folder of the result files, created if missing.
        name: file stem, without a folder.
        scores: score ×100 per metric key (`reliability` or `test/reliability`).
        settings: JSON-serialisable run settings; must include target_scorer, locality_scorer and
            prompt_template.
        diagnostics: JSON-serialisable measurements of the method beside its scores (the gate's mean α
            per case and layer), written to the JSON only, under "diagnostics".
        groups: the scores of each group of records (data whose records carry a `group`), written after
            the scores of all records.
        records: how many records were scored (on all devices together).
        partial: the run stopped before the end of its split (`"partial": true` in the JSON).
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    missing = [key for key in REQUIRED_SETTINGS if key not in settings]
    if missing:
        raise ValueError(
            f"result {name!r}: settings lack {', '.join(missing)} (required: {REQUIRED_SETTINGS})"
        )
    clean_scores: dict[str, float] = {}
    for key, value in scores.items():
        _check_score_key(key)
        clean_scores[key] = _score_value(key, value)
    if not clean_scores:
        raise ValueError(f"result {name!r}: no scores to write")
    by_group, group_records = _clean_groups(name, groups, clean_scores) if groups else ({}, {})
    clean_settings = dict(settings)
    for key, value in clean_settings.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"result {name!r}: setting {key!r} is not JSON-serialisable: {value!r}"
            ) from error

    directory = Path(directory)
    json_path = directory / f"{name}.json"
    csv_path = directory / f"{name}.csv"
    document: dict[str, Any] = {"scores": clean_scores, "settings": clean_settings}
    if records is not None:
        document["records"] = records
    if partial:
        document["partial"] = True
    if diagnostics:
        document["diagnostics"] = json.loads(json.dumps(dict(diagnostics), allow_nan=False))
    if by_group:
        document["scores_by_group"], document["records_by_group"] = by_group, group_records
    atomic_write_json(json_path, document)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "value", *by_group])
    writer.writerows(
        [key, repr(value), *(repr(group[key]) if key in group else "" for group in by_group.values())]
        for key, value in clean_scores.items()
    )
    if by_group or records is not None:
        writer.writerow([RECORDS, "" if records is None else records, *group_records.values()])
    padding = [""] * len(by_group)  # a setting has no per-group value
    writer.writerows(
        [f"{SETTING_PREFIX}{key}", value if isinstance(value, str) else json.dumps(value), *padding]
        for key, value in clean_settings.items()
    )
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


def _clean_groups(
    name: str, groups: GroupScores, scores: Mapping[str, float]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Group scores checked like the scores of all records, every key among those; positive counts."""
    if set(groups.scores) != set(groups.records):
        raise ValueError(
            f"result {name!r}: groups with scores {sorted(groups.scores)} differ from groups with record "
            f"counts {sorted(groups.records)}"
        )
    by_group = {}
    for group, group_scores in groups.scores.items():
        extra = sorted(set(group_scores) - set(scores))
        if extra:
            raise ValueError(f"result {name!r}: group {group!r} has scores {extra} that all records lack")
        by_group[group] = {key: _score_value(f"{group}/{key}", value) for key, value in group_scores.items()}
    records = {}
    for group, count in groups.records.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"result {name!r}: group {group!r} has a record count of {count!r}")
        records[group] = count
    return by_group, records


def read_results(path_json: str | Path) -> dict[str, Any]:
    """Read a result file written by `write_results`: {"scores": {...}, "settings": {...}}."""
    path_json = Path(path_json)
    with path_json.open(encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path_json}: not valid JSON ({error})") from error
    for field in ("scores", "settings"):
        if not isinstance(data, dict) or not isinstance(data.get(field), dict):
            raise ValueError(f"{path_json}: field {field!r} is missing or not an object")
    return data
