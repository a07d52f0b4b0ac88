"""External knowledge in latent space: retrieved hidden states of known facts injected into self-attention.

Attn(X, [X_k; X]) = (1 − α)·Attn(X, X, X) + α·Attn(X, X_k, X_k): at each hooked layer the attention output
is shifted toward h_know, the layer's own attention (its W_q, W_k, W_v and output projection) over the
top-K knowledge states retrieved for the sample. Retrieval uses the pre-attention state of the last input
token (the last prompt token) against the memory's `sem` keys; the retrieved `pos` states are the knowledge.
Knowledge states carry no position: with rotary models, queries and knowledge keys are compared unrotated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.knowledge.index import CosineIndex
from unike_pl.knowledge.states import at_positions, attention_input

Relevance = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer, knowledge (batch, hidden), query (batch, hidden)) -> α (batch,) in [0, 1]."""


@dataclass
class LatentConfig:
    """In-context knowledge in latent space (UniKE's accommodation)."""

    top_k: int = 40
    """Knowledge states retrieved per sample and layer."""
    alpha: float | None = None
    """A fixed weight of the knowledge term (latent IKE alone); None takes α from the semantic encoder
    (UniKE's collaboration), which needs trained encoders."""


@dataclass
class LayerKnowledge:
    """Retrievable knowledge of one layer: `keys` (count, hidden) are matched, `values` are injected."""

    keys: torch.Tensor
    values: torch.Tensor


class KnowledgeInjection:
    """Hooks that shift the attention output of `layers` toward retrieved knowledge.

    The base memory is fixed (a FAISS index); knowledge added by edits lives beside it and is searched
    exactly, so `clear` returns to the base memory with nothing to rebuild.
    """

    def __init__(
        self,
        backbone: Backbone,
        memory: Mapping[int, LayerKnowledge],
        top_k: int,
        alpha: float | Relevance,
        use_gpu: bool | None = None,
    ) -> None:
        self.backbone = backbone
        self.memory = dict(memory)
        self.indexes = {
            layer: CosineIndex(knowledge.keys, use_gpu) for layer, knowledge in self.memory.items()
        }
        self.top_k = top_k
        self.alpha = alpha
        self.added: dict[int, list[LayerKnowledge]] = {layer: [] for layer in self.memory}
        config = backbone.language_model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or backbone.hidden_size // self.heads)
        self.last_alpha: dict[int, torch.Tensor] = {}
        """α of the latest forward per layer, (batch,): what the semantic gate let in."""

    @property
    def layers(self) -> list[int]:
        return list(self.memory)

    def add(self, knowledge: Mapping[int, LayerKnowledge]) -> None:
        """Make edit knowledge retrievable (sequential edits accumulate) until `clear`."""
        for layer, item in knowledge.items():
            self.added[layer].append(LayerKnowledge(item.keys.detach().cpu(), item.values.detach().cpu()))

    def clear(self) -> None:
        for items in self.added.values():
            items.clear()

    def retrieve(self, layer: int, queries: torch.Tensor) -> torch.Tensor:
        """Values of the top-K keys by cosine (base memory and added knowledge), (batch, K, hidden)."""
        scores, ids = self.indexes[layer].search(queries, self.top_k)
        values = self.memory[layer].values[ids]  # (batch, k, hidden)
        if self.added[layer]:
            keys = torch.cat([item.keys for item in self.added[layer]])
            extra = torch.cat([item.values for item in self.added[layer]])
            extra_scores = F.normalize(queries.detach().float().cpu(), dim=-1) @ F.normalize(keys, dim=-1).T
            scores = torch.cat([scores, extra_scores], dim=1)
            values = torch.cat([values, extra[None].expand(len(queries), -1, -1)], dim=1)
            best = scores.topk(min(self.top_k, scores.shape[1]), dim=1).indices
            values = values.gather(1, best[..., None].expand(-1, -1, values.shape[-1]))
        return values.to(queries)

    def attend(
        self, layer: int, states: torch.Tensor, knowledge: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's attention of `states` (batch, seq, hidden) over `knowledge` (batch, K, hidden):
        the output (batch, seq, hidden) and the weights averaged over heads (batch, seq, K)."""
        part = self.backbone.layer_part
        decoder = self.backbone.decoder
        batch, seq, _ = states.shape
        query = part(layer, decoder.query)(states).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        key = (
            part(layer, decoder.key)(knowledge).view(batch, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        )
        value = (
            part(layer, decoder.value)(knowledge)
            .view(batch, -1, self.kv_heads, self.head_dim)
            .transpose(1, 2)
        )
        repeat = self.heads // self.kv_heads  # grouped-query attention shares each key/value head
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
        weights = (query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(dim=-1)  # (b, h, s, K)
        mixed = (weights @ value).transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)
        return part(layer, decoder.attention_out)(mixed), weights.mean(dim=1)

    def shift(self, layer: int, states: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The attention output `output` (batch, seq, hidden) moved toward the retrieved knowledge."""
        lengths = self.backbone.prompt_lengths
        if lengths is None:
            raise RuntimeError("knowledge injection needs the batch's prompt_length (run through Backbone)")
        query = at_positions(states, lengths - 1)  # (batch, hidden)
        knowledge = self.retrieve(layer, query)
        injected, weights = self.attend(layer, states, knowledge)
        if callable(self.alpha):
            # h_know for the gate: the knowledge states as the last prompt token weighs them.
            read = at_positions(weights, lengths - 1)  # (batch, K)
            alpha = self.alpha(layer, (read[..., None] * knowledge).sum(1), query).to(output)
        else:
            alpha = torch.full((len(output),), float(self.alpha), dtype=output.dtype, device=output.device)
        self.last_alpha[layer] = alpha.detach()
        return output + alpha[:, None, None] * (injected.to(output) - output)

    @contextmanager
    def attached(self) -> Iterator[KnowledgeInjection]:
        handles = []
        for layer in self.layers:
            attention = self.backbone.layer_part(layer, self.backbone.decoder.attention)
            handles.append(attention.register_forward_hook(self._hook(layer), with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            states = attention_input(args, kwargs)
            if isinstance(output, tuple):
                return (self.shift(layer, states, output[0]), *output[1:])
            return self.shift(layer, states, output)

        return hook
