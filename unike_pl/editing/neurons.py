"""Intrinsic knowledge: extra FFN key-value neurons (T-Patcher style) attached to decoder layers by hooks.

A feed-forward block is a key-value memory, FFN(q) = Act(q W_K + b_K) W_V + b_V. A patch adds n pairs:
FFN'(q) = FFN(q) + Act(q W_K^x + b_K^x) (W_V^x + shift), where `shift` is UniKE's β·ζ' (zero without
collaboration). Gated FFNs (LLaMA) get n new gate rows, n new up rows and n new down columns:
Act(q G^x + b^x) * (q U^x) (W_V^x + shift). The base weights are never touched: removing the hooks
restores the model exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.hooks import hooks


class NeuronPatch(nn.Module):
    """n extra key-value pairs for one FFN, trained for one edit."""

    def __init__(self, hidden: int, output: int, count: int, gated: bool, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.keys = nn.Parameter(torch.zeros(count, hidden))  # (n, hidden)
        self.key_bias = nn.Parameter(torch.zeros(count))
        self.up_keys = nn.Parameter(torch.zeros(count, hidden)) if gated else None
        self.values = nn.Parameter(torch.zeros(count, output))  # (n, output)
        self.value_shift: nn.Module | None = None
        """Called with no input, returns an (output,) vector added to every value row (UniKE's β·ζ');
        None adds nothing."""

    def init_keys(self, query: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> None:
        """Point every key at `query` (hidden,), the edit's FFN input, as T-Patcher does: k = q/‖q‖², so
        that q·k = 1 and the new neurons fire on it from the start. `noise` is a relative jitter between
        the keys (identical keys would stay identical)."""
        with torch.no_grad():
            key = query / query.pow(2).sum().clamp_min(1e-12)
            jitter = torch.randn(self.keys.shape, generator=generator, device="cpu") * noise * key.norm()
            self.keys.copy_(key + jitter.to(key))
            if self.up_keys is not None:
                self.up_keys.copy_(key + jitter.flip(0).to(key))

    def pre_activation(self, query: torch.Tensor) -> torch.Tensor:
        """q W_K^x + b_K^x, (..., n): positive where the neurons fire."""
        return query @ self.keys.to(query).T + self.key_bias.to(query)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """The patch's contribution to the FFN output, (..., output)."""
        hidden = self.activation(self.pre_activation(query))
        if self.up_keys is not None:
            hidden = hidden * (query @ self.up_keys.to(query).T)
        values = self.values if self.value_shift is None else self.values + self.value_shift()
        return hidden @ values.to(query)


def new_patch(backbone: Backbone, layer: int, count: int) -> NeuronPatch:
    """An all-zero patch sized for the FFN of decoder `layer` (it changes nothing until trained)."""
    key = backbone.layer_part(layer, backbone.decoder.ffn_keys[0])
    value = backbone.layer_part(layer, backbone.decoder.ffn_value)
    patch = NeuronPatch(
        key.in_features,
        value.out_features,
        count,
        backbone.decoder.gated,
        backbone.ffn_activation(),
    )
    return patch.to(device=value.weight.device, dtype=torch.float32)


class NeuronBank:
    """Patches per decoder layer; while `attached`, every FFN of those layers adds its patches' output.

    Sequential editing appends one patch per layer per edit; all of them stay active until `clear`.
    The FFN input of the latest forward is kept per layer (`queries`) for the activation losses.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.patches: dict[int, list[NeuronPatch]] = {}
        self.queries: dict[int, torch.Tensor] = {}

    def add(self, layer: int, patch: NeuronPatch) -> None:
        self.patches.setdefault(layer, []).append(patch)

    def latest(self) -> dict[int, NeuronPatch]:
        """The newest patch of each layer (the one being trained)."""
        return {layer: patches[-1] for layer, patches in self.patches.items() if patches}

    def clear(self) -> None:
        self.patches.clear()
        self.queries.clear()

    @contextmanager
    def attached(self) -> Iterator[NeuronBank]:
        """Hooks that add the patches to the FFNs; always removed on exit."""
        decoder = self.backbone.decoder
        with hooks() as attached:
            for layer in self.patches:
                attached.pre(self.backbone.layer_part(layer, decoder.ffn_keys[0]), self._capture_query(layer))
                attached.post(self.backbone.layer_part(layer, decoder.ffn_value), self._add_patches(layer))
            try:
                yield self
            finally:
                self.queries.clear()

    def _capture_query(self, layer: int) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            self.queries[layer] = args[0]

        return hook

    def _add_patches(self, layer: int) -> Callable[..., torch.Tensor]:
        def hook(_: nn.Module, __: Any, output: torch.Tensor) -> torch.Tensor:
            query = self.queries[layer]
            for patch in self.patches[layer]:
                output = output + patch(query).to(output.dtype)
            return output

        return hook
