"""What every editing method provides to the editing loop: apply edits, answer with them, undo them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from unike_pl.backbones.loader import Backbone


class AnsweringModel(Protocol):
    """What scoring runs: logits aligned with an encoded batch, and greedy answers to its prompts.
    A `Backbone` is one; methods that rewrite the inputs (in-context demonstrations) wrap it."""

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor: ...

    def generate_answers(self, batch: Mapping[str, Any], max_new_tokens: int = 16) -> list[str]: ...


@dataclass
class EditReport:
    steps: int
    """Optimisation steps the edit took (0 for methods that do not optimise per edit)."""
    seconds: float
    success: bool
    """Whether every target token of the edit input was predicted once the edit was applied."""
    layers: list[int] | None = None
    """The layers the edit changed, for methods that choose them per edit (LDKE's localization)."""
    memory_reached: int | None = None
    """Unrelated memory questions whose gate let the active edits' latent knowledge in (re-read so that
    the new neurons' margin loss sees their shifted states); None without a memory loss."""


class Editor(ABC):
    """Applies edits to a frozen backbone one after another, answers with all of them, and undoes them.

    `edit` receives the encoded edit example (a batch of one, its `Example` kept under `EXAMPLES`).
    Nothing of the base model may change for good: after `restore` it answers exactly as before.
    """

    backbone: Backbone

    @abstractmethod
    def edit(self, inputs: Mapping[str, Any]) -> EditReport: ...

    @abstractmethod
    def restore(self) -> None: ...

    @contextmanager
    def answering(self) -> Iterator[AnsweringModel]:
        """The model with every edit so far applied (by default the backbone itself, edited in place)."""
        yield self.backbone

    def gate_values(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """For methods with gated latent knowledge: α of each input of `batch` ("alpha") and its relevance
        per edited layer (keyed by the layer number), (batch,) each, with the edits so far applied. None for
        methods without a gate."""
        return None
