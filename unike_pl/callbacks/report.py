"""At the end of validate/test: a rich table of the scores and the result files (JSON + CSV)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from unike_pl.metrics import names
from unike_pl.metrics.results import GroupScores, write_results


def collect_scores(metrics: dict[str, Any], stage: str) -> dict[str, float]:
    """The `{stage}/{metric}` entries of Lightning's logged metrics, in the canonical metric order."""
    return {
        key: float(metrics[key])
        for metric in names.ALL_METRICS
        if (key := names.stage_key(stage, metric)) in metrics
    }


def collect_group_scores(metrics: dict[str, Any], stage: str) -> GroupScores | None:
    """The `{stage}/{group}/{metric}` entries of Lightning's logged metrics, for every group that logged
    its record count (`{stage}/{group}/records`); None on data without groups."""
    head, tail = f"{stage}/", f"/{names.RECORDS}"
    groups = [
        key[len(head) : -len(tail)]
        for key in metrics
        if key.startswith(head) and key.endswith(tail) and key.count("/") == 2
    ]
    if not groups:
        return None
    return GroupScores(
        scores={
            group: {
                names.stage_key(stage, metric): float(metrics[f"{stage}/{group}/{metric}"])
                for metric in names.ALL_METRICS
                if f"{stage}/{group}/{metric}" in metrics
            }
            for group in groups
        },
        records={group: int(metrics[f"{head}{group}{tail}"]) for group in groups},
    )


def scores_table(title: str, scores: dict[str, float], groups: GroupScores | None = None) -> Table:
    """One row per metric: the score of all records, then one column per group (and its record count)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("all (×100)" if groups else "score (×100)", justify="right")
    by_group = groups.scores if groups else {}
    for group in by_group:
        table.add_column(group, justify="right")
    for key, value in scores.items():
        metric = key.rpartition("/")[2]
        cells = [f"{by_group[group][key]:.2f}" if key in by_group[group] else "–" for group in by_group]
        table.add_row(names.DISPLAY_NAMES[metric], f"{value:.2f}", *cells)
    if groups:
        table.add_row("records", "", *(str(groups.records[group]) for group in by_group))
    return table


def gate_table(gate: dict[str, dict[str, float]]) -> Table:
    """Mean α per case (rows), then the mean relevance per edited layer (before the threshold)."""
    columns = list(next(iter(gate.values())))
    table = Table(title="gate: mean α of the latent knowledge, and relevance per edited layer")
    table.add_column("case")
    for column in columns:
        table.add_column("α" if column == "alpha" else f"layer {column}", justify="right")
    for case, values in gate.items():
        table.add_row(case, *(f"{values.get(column, float('nan')):.3f}" for column in columns))
    return table


class ResultsReport(L.Callback):
    """Prints the scores of a validate/test run and writes them with the settings that produced them."""

    def __init__(self, output_dir: str = "results", run_name: str | None = None) -> None:
        """
        Args:
            output_dir: folder of the result files.
            run_name: file stem prefix; defaults to the LightningModule's class name.
        """
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        self.written: list[Path] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "val", trainer.callback_metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test", trainer.callback_metrics)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Stopped by SIGTERM (Lightning stops after the current batch): the scores of the records edited
        so far go to `<name>_partial.json`, marked partial (a rerun resumes from the stored edits)."""
        stage = {TrainerFn.VALIDATING: "val", TrainerFn.TESTING: "test"}.get(trainer.state.fn)
        scores_so_far = getattr(pl_module, "scores_so_far", None)
        if isinstance(exception, SIGTERMException) and stage is not None and callable(scores_so_far):
            self._report(trainer, pl_module, stage, scores_so_far(stage), partial=True)

    def _report(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str,
        metrics: Mapping[str, Any],
        partial: bool = False,
    ) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        scores = collect_scores(metrics, stage)
        if not scores:
            return
        settings = {**_settings_of(pl_module), **_settings_of(trainer.datamodule), **run_settings(trainer)}
        diagnostics = getattr(pl_module, "result_diagnostics", dict)()
        groups = collect_group_scores(metrics, stage)
        name = f"{self.run_name or type(pl_module).__name__}_{stage}"
        records = metrics.get(f"{stage}/{names.RECORDS}")
        self.written = list(
            write_results(
                self.output_dir,
                f"{name}_partial" if partial else name,
                scores,
                settings,
                diagnostics,
                groups,
                records=None if records is None else int(records),
                partial=partial,
            )
        )
        if not partial:  # a finished run supersedes what an interrupted one wrote
            for suffix in (".json", ".csv"):
                (self.output_dir / f"{name}_partial{suffix}").unlink(missing_ok=True)
        console = Console()
        console.print(scores_table(f"{name} ({settings.get('eval_file', '')})", scores, groups))
        if "gate_alpha" in diagnostics:
            console.print(gate_table(diagnostics["gate_alpha"]))
        Console().print(f"results: {self.written[0]} and {self.written[1]}")


def run_settings(trainer: L.Trainer) -> dict[str, Any]:
    """Where the run ran: devices per node, nodes and the strategy."""
    return {
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
    }


def _settings_of(component: Any) -> dict[str, Any]:
    method = getattr(component, "result_settings", None)
    return method() if callable(method) else {}
