"""What the gate let in: mean α of the latent knowledge per evaluation case and edited layer.

A gate that works is high on the edit, its rephrase and its image rephrase, and near 0 on the locality
inputs and the hard neighbours; every editing run with gated knowledge records it beside its scores.
"""

from __future__ import annotations

from collections import defaultdict

from unike_pl.data.cases import EditBatch
from unike_pl.editing.base import Editor
from unike_pl.metrics import names

GATE_CASES = (*names.CASES, *names.NEIGHBOUR_CASES)
ALPHA = "alpha"
"""The key of the applied α beside the per-layer relevance."""

GateReadings = dict[str, dict[str, list[float | None]]]
"""{case: {"alpha" or a layer number: per-record mean α, or relevance at that layer (None where the record
has no input of that case)}}."""


def gate_readings(editor: Editor, batch: EditBatch) -> GateReadings | None:
    """α of every case's inputs of a batch under the editor's current edits, per record and layer (a
    neighbour case is the mean over the record's inputs); None when the method has no gate."""
    readings: GateReadings = {}
    for case in names.CASES:
        values = editor.gate_values(batch.cases[case])
        if values is None:
            return None
        readings[case] = {key: value.tolist() for key, value in values.items()}
    for case in names.NEIGHBOUR_CASES:
        per_record: dict[str, list[float | None]] = defaultdict(list)
        for group in batch.neighbours[case]:
            values = editor.gate_values(group) if group is not None else None
            for key in readings[names.EDIT]:
                per_record[key].append(None if values is None else float(values[key].mean()))
        readings[case] = dict(per_record)
    return readings


class GateSummary:
    """Running mean α per case and layer over the scored records, from fresh or stored readings."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, readings: GateReadings | None) -> None:
        for case, layers in (readings or {}).items():
            for layer, values in layers.items():
                kept = [value for value in values if value is not None]
                self.sums[case, layer] += sum(kept)
                self.counts[case, layer] += len(kept)

    def compute(self) -> dict[str, dict[str, float]]:
        """{case: {"alpha": mean α, layer: mean relevance at that layer, ...}} for the cases seen, in
        GATE_CASES order."""
        summary: dict[str, dict[str, float]] = {}
        for case in GATE_CASES:
            keys = sorted(
                (key for (seen, key), count in self.counts.items() if seen == case and count),
                key=lambda key: (key != ALPHA, int(key) if key != ALPHA else 0),
            )
            if keys:
                summary[case] = {key: self.sums[case, key] / self.counts[case, key] for key in keys}
        return summary
