"""Run only the edited tail of the language model: everything before the first edited layer is frozen,
so its output is the same at every optimisation step of an edit and is computed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.hooks import hooks


class _PrefixDone(Exception):
    """Raised by the capture hook to skip the layers the tail will run anyway."""


@dataclass
class PrefixState:
    """The input of the first tail layer for one batch: hidden states and the layer's other arguments
    (attention mask, positions, rotary embeddings: whatever the backbone passes)."""

    hidden: torch.Tensor  # (batch, seq, hidden)
    kwargs: dict[str, Any]
    prompt_lengths: torch.Tensor | None


class TailRunner:
    """Captures the input of decoder layer `first` once, then replays layers `first..` to the logits."""

    def __init__(self, backbone: Backbone, first: int) -> None:
        if not 0 <= first < backbone.num_layers:
            raise ValueError(f"tail start {first} is not a layer of a {backbone.num_layers}-layer model")
        self.backbone = backbone
        self.first = first

    @torch.no_grad()
    def capture(self, batch: Mapping[str, torch.Tensor]) -> PrefixState:
        captured: dict[str, Any] = {}

        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured["hidden"], captured["kwargs"] = layer_call(args, kwargs)
            raise _PrefixDone

        with hooks() as attached, suppress(_PrefixDone):
            attached.pre(self.backbone.layers[self.first], hook, with_kwargs=True)
            self.backbone(batch)
        if "hidden" not in captured:
            raise RuntimeError(f"decoder layer {self.first} was never called by the backbone's forward")
        return PrefixState(captured["hidden"].detach(), captured["kwargs"], batch.get("prompt_length"))

    def logits(self, state: PrefixState) -> torch.Tensor:
        """Logits (batch, seq, vocab) through the tail layers, with every hook on them active."""
        with self.backbone.reading(state.prompt_lengths):
            hidden = run_layers(self.backbone.layers[self.first :], state.hidden, state.kwargs)
            return self.backbone.output_logits(hidden)


CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "cache")
"""Names transformers versions give a decoder layer's key-value cache argument."""


def layer_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """What a decoder layer was called with (from a forward pre-hook), ready to call layers again: the
    hidden states and the other arguments (attention mask, positions, rotary embeddings)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    # A key-value cache would grow with every replay (and tie each step's graph to the last).
    others = {
        key: None if key in CACHE_ARGUMENTS else value
        for key, value in kwargs.items()
        if key != "hidden_states"
    }
    return hidden, others


def run_layers(layers: Sequence[nn.Module], hidden: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
    """`hidden` (batch, seq, hidden) through decoder `layers` in order, each called with `kwargs`."""
    for layer in layers:
        output = layer(hidden, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden
