"""Read the hidden states that UniKE works with, at chosen decoder layers, through hooks.

The *pre-attention state* of a layer is the input of its self-attention block (what W_q, W_k and W_v
consume); the *FFN input* is the input of its FFN key linear (what the extra neurons read).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.hooks import capture_output, hooks


def attention_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a self-attention module was called with, positional or keyword."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def layer_inputs(backbone: Backbone, layers: Sequence[int]) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
    """Yield {"attention": {layer: (batch, seq, hidden)}, "ffn": {layer: (batch, seq, hidden)}} filled by
    the latest forward of `backbone` inside the block."""
    captured: dict[str, dict[int, torch.Tensor]] = {"attention": {}, "ffn": {}}
    shape: dict[str, torch.Size] = {}

    def on_attention(layer: int):
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            states = attention_input(args, kwargs)
            shape["batch_seq"] = states.shape[:2]
            captured["attention"][layer] = states.detach()

        return hook

    def on_ffn(layer: int):
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            # Some decoders (OPT) flatten (batch, seq) before the FFN; restore the two axes.
            captured["ffn"][layer] = args[0].detach().reshape(*shape["batch_seq"], -1)

        return hook

    with hooks() as attached:
        for layer in layers:
            attention = backbone.layer_part(layer, backbone.decoder.attention)
            key = backbone.layer_part(layer, backbone.decoder.ffn_keys[0])
            attached.pre(attention, on_attention(layer), with_kwargs=True)
            attached.pre(key, on_ffn(layer))
        yield captured


def at_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of `states` (batch, seq, hidden) at one position per sample (batch,) -> (batch, hidden)."""
    return states[torch.arange(len(positions), device=states.device), positions.to(states.device)]


@dataclass
class PromptStates:
    """One decoder layer's output states on a batch, read where the prompt is (what classifiers that route
    inputs, SERAC's and LDKE's, describe an input by)."""

    logits: torch.Tensor
    """The backbone's logits on the batch."""
    states: torch.Tensor
    """(batch, seq, hidden) float32."""
    in_prompt: torch.Tensor
    """(batch, seq) bools: the prompt positions (image queries included, the target excluded)."""
    last: torch.Tensor
    """(batch, hidden): the state at each sample's last prompt position."""

    def mean(self, positions: torch.Tensor) -> torch.Tensor:
        """Mean state over the (batch, seq) `positions` of each sample (zeros where there are none)."""
        weights = positions.unsqueeze(-1).float()
        return (self.states * weights).sum(1) / weights.sum(1).clamp(min=1)


@torch.no_grad()
def prompt_states(backbone: Backbone, batch: Mapping[str, Any], layer: int) -> PromptStates:
    """Run `backbone` on `batch` and read `layer`'s output states."""
    with capture_output(backbone.layers[layer]) as captured:
        logits = backbone(batch)
    states = captured["output"]
    states = (states[0] if isinstance(states, tuple) else states).float()
    prompt_length = batch["prompt_length"].to(states.device)
    positions = torch.arange(states.shape[1], device=states.device)
    in_prompt = positions.unsqueeze(0) < prompt_length.unsqueeze(1)
    return PromptStates(logits, states, in_prompt, at_positions(states, prompt_length - 1))
