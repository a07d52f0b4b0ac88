"""Routing: answer each input with the path of the stored edit whose scope it falls in, or with the original
model. SERAC's scope classifier and LDKE's Disentanglement Classifier are two classifiers behind one router.

- `EditRouter` keeps one key per edit, read from features of the frozen base model, and sends each input to
  its best-scoring edit when that score passes the threshold (None: no edit's scope).
- `RoutedAnswers` is what scoring runs: each routed row answered by its edit's path, every other row by the
  original model, merged per sample (logits and greedy answers).
- A path answers some rows of a batch: `SelectedRows` runs a model on those rows alone (SERAC's counterfactual
  model with the edit's fact in context), `WholeBatch` runs an edited model on the whole batch and keeps
  them (LDKE's inner editor: one edited model for every edit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from unike_pl.backbones.encoding import EXAMPLES, KeptExamples, select_sample
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.base import AnsweringModel

Features = Callable[[Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]]
"""An encoded batch -> the frozen base model's logits (batch, seq, vocab) and its features (batch, size)."""


class PairClassifier(Protocol):
    """Scores (input, edit) pairs: what a router needs of a trained classifier."""

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """What is stored per edit and compared per input, from features (n, size)."""
        ...

    def logits(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Pair logits (inputs, edits) between encoded inputs and stored keys; > 0: in the edit's scope."""
        ...


class EditRouter:
    """Stores one key per edit and routes each input to its best-scoring edit above `threshold`."""

    def __init__(self, features: Features, classifier: PairClassifier, threshold: float) -> None:
        self.features = features
        self.classifier = classifier
        self.threshold = threshold
        self.keys: list[torch.Tensor] = []  # one per edit, in the order the edits came

    @torch.no_grad()
    def add(self, edit: Mapping[str, Any]) -> None:
        """Store the key of an encoded edit (a batch of one), read before the edit changes anything."""
        _, features = self.features(edit)
        self.keys.append(self.classifier.encode(features)[0])

    def clear(self) -> None:
        self.keys = []

    @torch.no_grad()
    def route(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, list[int | None]]:
        """The base model's logits on `batch` and, per sample, the index of its best-scoring edit when that
        score exceeds the threshold (None: out of every edit's scope)."""
        logits, features = self.features(batch)
        if not self.keys:
            return logits, [None] * len(logits)
        pair_logits = self.classifier.logits(self.classifier.encode(features), torch.stack(self.keys))
        best = torch.sigmoid(pair_logits).max(dim=-1)
        # Compared as tensors, in the scores' dtype, like the training losses count routes.
        above = (best.values > self.threshold).tolist()
        return logits, [
            int(edit) if inside else None for edit, inside in zip(best.indices, above, strict=True)
        ]


class AnswerPath(Protocol):
    """Answers chosen rows of an encoded batch."""

    def logits(self, batch: Mapping[str, Any], rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), seq, vocab) logits aligned with the batch's positions."""
        ...

    def answers(self, batch: Mapping[str, Any], rows: Sequence[int], max_new_tokens: int) -> list[str]:
        """Greedy answers of those rows, in their order."""
        ...


def rows_of(batch: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """Rows of an encoded batch for a model that re-encodes its inputs from the examples (a `ContextView`):
    token tensors (padding kept, so that its aligned logits fit the batch) and examples. Image inputs are
    left out: such a model re-encodes them."""
    index = torch.tensor(list(rows), device=batch["input_ids"].device)
    selected = {key: batch[key][index] for key in ("input_ids", "attention_mask", "labels", "prompt_length")}
    selected[EXAMPLES] = KeptExamples([batch[EXAMPLES][i] for i in rows])
    return selected


class SelectedRows:
    """A path that runs `model` on the chosen rows alone (`rows_of`): the model must re-encode its inputs
    from the examples, as a `ContextView` does."""

    def __init__(self, model: AnsweringModel) -> None:
        self.model = model

    def logits(self, batch: Mapping[str, Any], rows: Sequence[int]) -> torch.Tensor:
        return self.model(rows_of(batch, rows))

    def answers(self, batch: Mapping[str, Any], rows: Sequence[int], max_new_tokens: int) -> list[str]:
        return self.model.generate_answers(rows_of(batch, rows), max_new_tokens)


class WholeBatch:
    """A path that opens `answering` (an editor's edited model), runs it on the whole batch and keeps the
    chosen rows: any edited model can answer a batch as encoded, not every one a batch cut down."""

    def __init__(self, answering: Callable[[], AbstractContextManager[AnsweringModel]]) -> None:
        self.answering = answering

    def logits(self, batch: Mapping[str, Any], rows: Sequence[int]) -> torch.Tensor:
        with self.answering() as model:
            return model(batch)[list(rows)]

    def answers(self, batch: Mapping[str, Any], rows: Sequence[int], max_new_tokens: int) -> list[str]:
        with self.answering() as model:
            answers = model.generate_answers(batch, max_new_tokens)
        return [answers[row] for row in rows]


class RoutedAnswers:
    """What scoring runs with a router: each sample answered by the path of the edit it was routed to
    (`edited(edit)`), or by the `original` model, merged per sample.

    Rows are grouped by path, and paths are told apart by identity: edits that share one path (LDKE's one
    edited model) are answered by a single call, each of SERAC's edits by its own."""

    def __init__(self, router: EditRouter, edited: Callable[[int], AnswerPath], original: Backbone) -> None:
        self.router = router
        self.edited = edited
        self.original = original

    def _groups(self, chosen: Sequence[int | None]) -> list[tuple[AnswerPath, list[int]]]:
        """(path, its rows) in the order the paths are first chosen; rows routed to no edit left out."""
        path_of = {edit: self.edited(edit) for edit in dict.fromkeys(e for e in chosen if e is not None)}
        groups: dict[int, tuple[AnswerPath, list[int]]] = {}  # keyed by id: `path_of` keeps them alive
        for row, edit in enumerate(chosen):
            if edit is not None:
                path = path_of[edit]
                groups.setdefault(id(path), (path, []))[1].append(row)
        return list(groups.values())

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        logits, chosen = self.router.route(batch)
        merged = logits.clone()
        for path, rows in self._groups(chosen):
            index = torch.tensor(rows, device=merged.device)
            merged[index] = path.logits(batch, rows).to(merged.dtype)
        return merged

    def generate_answers(self, batch: Mapping[str, Any], max_new_tokens: int = 16) -> list[str]:
        _, chosen = self.router.route(batch)
        original = self.original
        answers: list[str] = [""] * len(chosen)
        for row, edit in enumerate(chosen):
            if edit is None:
                # `Backbone.generate_answers` answers sample by sample: one row alone answers the same.
                single = select_sample(batch, row, original.layout, original.model.config)
                answers[row] = original.generate_answers(single, max_new_tokens)[0]
        for path, rows in self._groups(chosen):
            for row, answer in zip(rows, path.answers(batch, rows, max_new_tokens), strict=True):
                answers[row] = answer
        return answers
