"""IKE's demonstrations: built from an MMEdit training split and retrieved once per edit by the new fact.

Every training record (src, alt, rephrase, loc, loc_ans) gives a *copy*, an *update* and a *retain*
demonstration (`unike_pl.ike_format`). The k written before an edit's inputs are chosen by the cosine of
sentence embeddings between the new fact, written as its own copy demonstration, and the demonstrations:

- `ranked` (the benchmark code's multimodal IKE): the k demonstrations nearest to the new fact among all
  copy, update and retain demonstrations of the split, the nearest first;
- `paper` (the IKE paper's code): the k records nearest to the new fact, each written as one kind, the
  kinds in the paper's proportion copy : update : retain = 1 : 3 : 4 (for k = 32: 4, 12, 16) in an order
  shuffled per edit (seeded by the fact), the nearest record last.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from unike_pl.data.mmedit import read_mmedit
from unike_pl.errors import UserError
from unike_pl.ike_format import copy_demonstration, retain_demonstration, update_demonstration

SELECTIONS = ("ranked", "paper")
PAPER_PROPORTION = {"copy": 1, "update": 3, "retain": 4}
"""The IKE paper's mix of demonstration kinds (its code: 4 copy, 12 update, 16 retain of 32)."""

Embed = Callable[[Sequence[str]], torch.Tensor]
"""Texts -> unit sentence embeddings (n, dim)."""


@dataclass(frozen=True)
class TrainingFact:
    """The fields of one training record that its demonstrations are written from."""

    prompt: str
    target: str
    rephrase: str
    question: str
    """An unrelated question (MMEdit's `loc`) and its own answer (`loc_ans`)."""
    answer: str

    def demonstration(self, kind: str) -> str:
        if kind == "copy":
            return copy_demonstration(self.prompt, self.target)
        if kind == "update":
            return update_demonstration(self.prompt, self.target, self.rephrase)
        if kind == "retain":
            return retain_demonstration(self.prompt, self.target, self.question, self.answer)
        raise UserError(f"no demonstration kind {kind!r}")


def read_training_facts(file: str | Path, task: str) -> list[TrainingFact]:
    """The distinct training facts of an MMEdit split (images are not read: demonstrations are text)."""
    split = read_mmedit(file, task, "", "", check_images=False)
    facts = (TrainingFact(r.src, r.alt, r.rephrase, r.loc, r.loc_ans) for r in split.records)
    return list(dict.fromkeys(facts))


def kind_counts(k: int) -> dict[str, int]:
    """How many demonstrations of each kind `k` holds in the paper's proportion (largest remainders)."""
    total = sum(PAPER_PROPORTION.values())
    shares = {kind: k * part / total for kind, part in PAPER_PROPORTION.items()}
    counts = {kind: int(share) for kind, share in shares.items()}
    by_remainder = sorted(shares, key=lambda kind: shares[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: k - sum(counts.values())]:
        counts[kind] += 1
    return counts


class DemonstrationPool:
    """The demonstrations of a training split with their sentence embeddings, and the k for a new fact."""

    def __init__(self, facts: Sequence[TrainingFact], embed: Embed, selection: str = "ranked") -> None:
        if selection not in SELECTIONS:
            raise UserError(f"in_context.selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        self.facts = list(facts)
        self.embed = embed
        self.selection = selection
        if selection == "ranked":
            kinds = ("copy", "update", "retain")
            # records that say the same thing demonstrate it once
            self.texts = list(dict.fromkeys(f.demonstration(kind) for f in self.facts for kind in kinds))
        else:  # a record is found by its fact, written as the query is
            self.texts = [f.demonstration("copy") for f in self.facts]
        self.keys = embed(self.texts) if self.texts else torch.zeros(0, 1)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, prompt: str, target: str, k: int) -> list[str]:
        """The demonstrations written before the inputs of the edit (prompt, target), in their order."""
        if k <= 0 or not self.texts:
            return []
        query = self.embed([copy_demonstration(prompt, target)])[0]
        nearest = (self.keys @ query.to(self.keys.dtype)).topk(min(k, len(self.texts))).indices.tolist()
        if self.selection == "ranked":
            return [self.texts[i] for i in nearest]
        kinds = [kind for kind, count in kind_counts(len(nearest)).items() for _ in range(count)]
        random.Random(copy_demonstration(prompt, target)).shuffle(kinds)
        written = [self.facts[i].demonstration(kind) for i, kind in zip(nearest, kinds, strict=True)]
        return written[::-1]  # the nearest record next to the new fact
