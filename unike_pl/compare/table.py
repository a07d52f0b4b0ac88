"""The comparison table: one row per method × protocol, from each run's result file (markdown and CSV).
Runs on data whose records carry groups add, after the figures of all records, the per-group figures
(`Rel (seen-rule)` ...). A cell run with several seeds is one row: each figure is the mean over its
seeds, with the sample standard deviation beside it (`<figure>_std`; markdown `mean ± std`)."""

from __future__ import annotations

import csv
import io
import json
import statistics
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


STD = "_std"
"""Suffix of a figure's standard deviation over seeds."""


def _over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for the finished seeds of a cell: means, and standard deviations when there are several."""
    first = rows[0]
    merged: dict[str, Any] = {"method": first["method"], "protocol": first["protocol"], "seeds": len(rows)}
    figures = [key for key in first if key not in merged]
    for key in figures:
        values = [row.get(key) for row in rows]
        if any(value is None for value in values):
            merged[key] = None
            continue
        merged[key] = statistics.fmean(values)
        if len(values) > 1:
            merged[key + STD] = statistics.stdev(values)
    return merged


def collect_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per method × protocol that has finished runs, in the plan's order (seeds merged)."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in plan.runs:
        if (row := run_row(run)) is not None:
            cells.setdefault((run.method, run.protocol), []).append(row)
    return [_over_seeds(rows) for rows in cells.values()]


def group_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(group, metric) of every per-group figure that some row has: group by group (sorted), metrics in
    their usual order."""
    present = {key for row in rows for key in row if not key.endswith(STD)}
    groups = sorted({key.rpartition("/")[0] for key in present if "/" in key})
    return [(g, m) for g in groups for m in GROUP_METRICS if group_column(g, m) in present]


def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    value, spread = row.get(key), row.get(key + STD)
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + ("" if spread is None else f" ± {spread:.{digits}f}")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    by_group = group_columns(rows)
    headers = ["method", "protocol", "seeds", *(names.DISPLAY_NAMES[m] for m in COLUMNS), "run (min)"]
    headers += [f"{names.DISPLAY_NAMES[metric]} ({group})" for group, metric in by_group]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["method"], row["protocol"], str(row.get("seeds", 1))]
        cells += [_cell(row, m, 2 if m == names.EDIT_SECONDS else 1) for m in COLUMNS]
        cells.append(_cell(row, "run_minutes", 1))
        cells += [_cell(row, group_column(group, metric), 1) for group, metric in by_group]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    figures = [*COLUMNS, "run_minutes", *(group_column(g, m) for g, m in group_columns(rows))]
    spreads = [key + STD for key in figures if any(key + STD in row for row in rows)]
    fields = ["method", "protocol", "seeds", *figures, *spreads]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(plan: Plan, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    markdown, table = plan.output_dir / "comparison.md", plan.output_dir / "comparison.csv"
    atomic_write_text(markdown, markdown_table(rows))
    atomic_write_text(table, csv_table(rows))
    return markdown, table
