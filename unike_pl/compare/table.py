"""The comparison table: one row per method × protocol, from each run's result file (markdown and CSV).
Runs on data whose records carry groups add, after the figures of all records, the per-group figures
(`Rel (seen-rule)` ...)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from unike_pl.compare.plan import Plan, Run
from unike_pl.io import atomic_write_text
from unike_pl.metrics import names

COLUMNS = (
    *names.EDIT_METRICS,
    names.IMMEDIATE_METRICS[0],
    names.EDIT_SECONDS,
    names.EDIT_STEPS,
)
"""The five metrics, the three generation accuracies, Rel right after each edit (sequences), cost."""
GROUP_METRICS = (*names.TARGET_METRICS, *names.LOCALITY_METRICS, *names.NEIGHBOUR_METRICS)
"""Shown per group of records: the five metrics and LDKE's two."""


def group_column(group: str, metric: str) -> str:
    """The row key and CSV header of one group's metric: `seen-rule/reliability`."""
    return f"{group}/{metric}"


def run_row(run: Run) -> dict[str, Any] | None:
    """The scores of a finished run (None while it has not run)."""
    if not run.result_file.is_file():
        return None
    result = json.loads(run.result_file.read_text())
    scores = result["scores"]
    row: dict[str, Any] = {"method": run.method, "protocol": run.protocol}
    for metric in COLUMNS:
        row[metric] = scores.get(names.stage_key("val", metric))
    for group, group_scores in result.get("scores_by_group", {}).items():
        for metric in GROUP_METRICS:
            if (key := names.stage_key("val", metric)) in group_scores:
                row[group_column(group, metric)] = group_scores[key]
    timing = run.folder / "timing.json"
    row["run_minutes"] = json.loads(timing.read_text())["seconds"] / 60 if timing.is_file() else None
    return row


def collect_rows(plan: Plan) -> list[dict[str, Any]]:
    return [row for run in plan.runs if (row := run_row(run)) is not None]


def group_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(group, metric) of every per-group figure that some row has: group by group (sorted), metrics in
    their usual order."""
    present = {key for row in rows for key in row}
    groups = sorted({key.rpartition("/")[0] for key in present if "/" in key})
    return [(g, m) for g in groups for m in GROUP_METRICS if group_column(g, m) in present]


def _cell(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    by_group = group_columns(rows)
    headers = ["method", "protocol", *(names.DISPLAY_NAMES[m] for m in COLUMNS), "run (min)"]
    headers += [f"{names.DISPLAY_NAMES[metric]} ({group})" for group, metric in by_group]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["method"], row["protocol"]]
        cells += [_cell(row[m], 1 if m not in (names.EDIT_SECONDS,) else 2) for m in COLUMNS]
        cells.append(_cell(row["run_minutes"], 1))
        cells += [_cell(row.get(group_column(group, metric)), 1) for group, metric in by_group]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    by_group = [group_column(group, metric) for group, metric in group_columns(rows)]
    writer = csv.DictWriter(
        buffer, fieldnames=["method", "protocol", *COLUMNS, "run_minutes", *by_group], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(plan: Plan, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    markdown, table = plan.output_dir / "comparison.md", plan.output_dir / "comparison.csv"
    atomic_write_text(markdown, markdown_table(rows))
    atomic_write_text(table, csv_table(rows))
    return markdown, table
