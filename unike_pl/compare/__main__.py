"""`python -m unike_pl.compare --config configs/compare.yaml`: every method × protocol, one table.

Runs the fits the methods need (when their checkpoints are missing), then one `validate` per method and
protocol (a finished run is not redone; an interrupted one resumes from its per-edit results), and writes
`comparison.md`, `comparison.csv`, `metrics.png` and `spaces.png` to the config's `output_dir`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml
from rich.console import Console

from unike_pl.cli import main as cli_main
from unike_pl.compare.plan import Plan, Run, build_plan, slug
from unike_pl.compare.plots import load_spaces, metric_bars, space_projection, sweep_lines
from unike_pl.compare.table import collect_rows, markdown_table, write_tables
from unike_pl.errors import exit_on_user_error
from unike_pl.io import atomic_write_json, atomic_write_text

console = Console()


def run_prerequisites(plan: Plan) -> None:
    for item in plan.prerequisites:
        if Path(item.checkpoint).is_file():
            continue
        console.print(f"[bold]fit --config {item.config}[/] (no {item.checkpoint} yet)")
        start = time.perf_counter()
        cli_main(["fit", "--config", item.config])
        console.print(f"fit took {(time.perf_counter() - start) / 60:.1f} min")
        if not Path(item.checkpoint).is_file():
            raise FileNotFoundError(f"fit --config {item.config} did not write {item.checkpoint}")


def run_one(run: Run) -> None:
    """Validate one method × protocol, unless it already ran with exactly this config."""
    config_file = run.folder / "run.yaml"  # Lightning writes its own resolved config.yaml beside it
    text = yaml.safe_dump(run.config, sort_keys=False)
    if run.result_file.is_file() and config_file.is_file() and config_file.read_text() == text:
        return
    atomic_write_text(config_file, text)
    console.print(f"[bold]{run.method} · {run.protocol}[/]: validate --config {config_file}")
    args = ["validate", "--config", str(config_file)]
    if run.ckpt_path is not None:
        args += ["--ckpt_path", run.ckpt_path]
    # A cell that resumes from stored edits is not timed: its wall-clock time would not be the cell's.
    fresh = not any((run.folder / "edits").glob("records_*.json"))
    start = time.perf_counter()
    cli_main(args)
    if fresh:
        atomic_write_json(run.folder / "timing.json", {"seconds": time.perf_counter() - start})


def report(plan: Plan) -> None:
    rows = collect_rows(plan)
    written = list(write_tables(plan, rows))
    written.append(metric_bars(rows, plan.protocols, plan.methods, plan.output_dir / "metrics.png"))
    if plan.sweep is not None:
        for protocol in plan.protocols:
            name = "sweep.png" if len(plan.protocols) == 1 else f"sweep_{slug(protocol)}.png"
            written.append(sweep_lines(rows, plan.sweep, protocol, plan.output_dir / name))
    if plan.encoders_checkpoint and Path(plan.encoders_checkpoint).is_file():
        memory, encoders = load_spaces(plan.base_model, plan.data_root, plan.encoders_checkpoint)
        written.append(space_projection(memory, encoders, plan.output_dir / "spaces.png"))
    console.print(markdown_table(rows))
    console.print("written: " + ", ".join(str(path) for path in written))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unike_pl.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="comparison config (configs/compare.yaml)")
    parser.add_argument("--methods", nargs="+", help="only these methods (names as in the config)")
    parser.add_argument("--protocols", nargs="+", help="only these protocols")
    parser.add_argument("--report-only", action="store_true", help="write the tables from finished runs")
    args = parser.parse_args(argv)
    plan = build_plan(args.config, args.methods, args.protocols)
    if not args.report_only:
        start = time.perf_counter()
        run_prerequisites(plan)
        for run in plan.runs:
            run_one(run)
        console.print(f"comparison took {(time.perf_counter() - start) / 60:.1f} min")
    report(build_plan(args.config) if args.methods or args.protocols else plan)


if __name__ == "__main__":
    exit_on_user_error(main)()
