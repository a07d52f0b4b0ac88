"""The knowledge memory: per edited layer, the states of (Q, A_pos, A_neg) triplets the base model got wrong.

sem  (count, hidden): pre-attention state at the last question token (the retrieval key)
pos  (count, hidden): pre-attention state at the last token of Q + A_pos (the knowledge)
neg  (count, hidden): pre-attention state at the last token of Q + A_neg (the hallucination)
ffn  (count, hidden): FFN input at the last question token (a memory of unrelated FFN inputs that
                      the extra neurons must stay silent on)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unike_pl.errors import read_torch_file
from unike_pl.io import atomic_write_bytes

STATE_KINDS = ("sem", "pos", "neg", "ffn")


@dataclass
class Triplet:
    """Where a mined triplet comes from, and its texts."""

    file: str
    record: int
    case: str
    question: str
    positive: str
    negative: str


@dataclass
class KnowledgeMemory:
    layers: list[int]
    states: dict[int, dict[str, torch.Tensor]]
    triplets: list[Triplet] = field(default_factory=list)

    def __post_init__(self) -> None:
        for layer in self.layers:
            for kind in STATE_KINDS:
                rows = len(self.states[layer][kind])
                if rows != len(self.triplets):
                    raise ValueError(f"layer {layer} {kind}: {rows} rows for {len(self.triplets)} triplets")

    def __len__(self) -> int:
        return len(self.triplets)

    @property
    def hidden_size(self) -> int:
        return int(self.states[self.layers[0]]["sem"].shape[1])

    def stacked(self, kind: str, rows: Any = slice(None)) -> torch.Tensor:
        """States of one kind for `rows`, stacked over layers: (rows, layers, hidden)."""
        return torch.stack([self.states[layer][kind][rows] for layer in self.layers], dim=1)

    @classmethod
    def concatenate(cls, parts: list[KnowledgeMemory]) -> KnowledgeMemory:
        if not parts:
            raise ValueError("no memory parts to concatenate")
        layers = parts[0].layers
        states = {
            layer: {kind: torch.cat([p.states[layer][kind] for p in parts]) for kind in STATE_KINDS}
            for layer in layers
        }
        return cls(layers, states, [t for p in parts for t in p.triplets])

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        payload = {
            "layers": self.layers,
            "states": self.states,
            "triplets": [vars(t) for t in self.triplets],
        }
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeMemory:
        payload = read_torch_file(path, "a knowledge memory (build it with `fit`)")
        return cls(payload["layers"], payload["states"], [Triplet(**t) for t in payload["triplets"]])
