"""External knowledge in latent space: hidden states of known facts injected into self-attention.

Attn(X, [X_k; X]) = (1 − α)·Attn(X, X, X) + α·Attn(X, X_k, X_k): at each hooked layer the attention output
is shifted toward h_know, the layer's own attention (its W_q, W_k, W_v and output projection) over a
knowledge set. Knowledge belongs to the edit (METHOD.md §4): when an edit is made, the edit input's
pre-attention state at its last prompt token retrieves the top-K memory `sem` keys; their `pos` states plus
the edit's own positive state are the edit's knowledge set, fixed while the edit is active and read by
every scored input.

The gate is read once per input, before the first edited layer, from the input's *unedited* states: the
edited layers are replayed with every edit paused, and at each of them the last prompt token's state is
compared with the edit's (semantic relevance, averaged over the layers). Reading it inside the edited
forward instead would compare an in-scope input after the edit has already moved it (the neurons fire on
it) with the edit's unedited state: measured on 40 world edits, the edit input's own α fell from 0.86 at
the first edited layer to 0.08–0.14 at the later ones. An input far from every active edit gets α = 0 and
passes every edited layer untouched; with several active edits it reads the set of the most relevant one.
Knowledge states carry no position: with rotary models, queries and knowledge keys are compared unrotated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.editing.tail import layer_call, run_layers
from unike_pl.hooks import hooks, paused
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.index import CosineIndex, IndexConfig
from unike_pl.knowledge.states import at_positions, attention_input
from unike_pl.settings import require_positive


@dataclass
class LatentConfig:
    """In-context knowledge in latent space (UniKE's accommodation)."""

    top_k: int = 40
    """Memory states retrieved per edit and layer (the edit's own positive state is added to them)."""
    alpha: float | None = None
    """A fixed weight of the knowledge term for every input (latent IKE alone: the gate never closes);
    None takes α from the semantic encoder (UniKE's collaboration), which needs trained encoders."""
    gate_threshold: float | None = None
    """With α from the semantic encoder: relevance below this sets α to 0 (the gate closes). None takes
    the threshold the DisentangleModule fitted (in the encoders checkpoint); 0 never closes it."""
    gate_value: str = "one"
    """α of an input the semantic gate lets in: "one" (it reads the edit's knowledge as fully as the edit
    input did while the neurons were trained on it) or "relevance" (the clamped cosine itself, the paper's
    Eq. 7). Measured on 40 world edits, one: T-Gen / M-Gen 75.0 / 97.5, relevance: 52.5 / 77.5 (same
    locality): the neurons, trained on the edit read at α ≈ 0.86, fire less on a rephrase read at ≈ 0.6."""

    def __post_init__(self) -> None:
        require_positive("latent", top_k=self.top_k)


GATE_VALUES = ("one", "relevance")


@dataclass
class LayerKnowledge:
    """The memory of one layer: `keys` (count, hidden) are matched, `values` (count, hidden) are read."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class EditKnowledge:
    """One edit's knowledge at one layer, fixed while the edit is active."""

    states: torch.Tensor
    """(K + 1, hidden): the retrieved positive states and the edit's own, what the layer attends over."""
    key: torch.Tensor
    """(hidden,): what the gate compares inputs with, the edit's own positive state (Q + A_pos at its last
    token). Measured on 100 world edits it separates in-scope from unrelated inputs at least as well as
    the attention-weighted read of the whole set (balanced accuracy 0.982 vs 0.977)."""


LayerStates = Mapping[int, torch.Tensor]
"""Per edited layer, one state per row: (rows, hidden)."""


class Gate(Protocol):
    """How much knowledge an input lets in. `relevance` ranks the active edits for each input from the
    states at every edited layer: keys (edits, hidden) and queries (batch, hidden) per layer -> (batch,
    edits); `weight` turns each input's best relevance (batch,) into α (batch,) in [0, 1]."""

    def relevance(self, keys: LayerStates, queries: LayerStates) -> torch.Tensor: ...

    def weight(self, relevance: torch.Tensor) -> torch.Tensor: ...


class SemanticGate:
    """UniKE's gate: the relevance cosine(Enc_Sem(key), Enc_Sem(query)) clamped to [0, 1] (averaged over the
    edited layers); below the threshold (fitted by the DisentangleModule unless given) α = 0, above it α is
    1 or the relevance itself (`value`, see `LatentConfig.gate_value`)."""

    def __init__(
        self, encoders: DisentangledEncoders, threshold: float | None = None, value: str = "one"
    ) -> None:
        if value not in GATE_VALUES:
            raise ValueError(f"latent.gate_value must be one of {', '.join(GATE_VALUES)}, got {value!r}")
        self.encoders = encoders
        self.value = value
        self.threshold = float(encoders.gate_threshold) if threshold is None else threshold

    def relevance(self, keys: LayerStates, queries: LayerStates) -> torch.Tensor:
        return torch.stack(
            [self.encoders.relevance(layer, keys[layer], queries[layer]) for layer in keys]
        ).mean(0)

    def weight(self, relevance: torch.Tensor) -> torch.Tensor:
        value = relevance if self.value == "relevance" else torch.ones_like(relevance)
        return torch.where(relevance >= self.threshold, value, torch.zeros_like(relevance))


class FixedGate:
    """A constant α for every input (the ablations without collaboration: the gate never closes); the edit
    an input reads is the one whose states are nearest by cosine."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def relevance(self, keys: LayerStates, queries: LayerStates) -> torch.Tensor:
        cosines = [
            F.normalize(queries[layer].float(), dim=-1) @ F.normalize(keys[layer].float(), dim=-1).T
            for layer in keys
        ]
        return torch.stack(cosines).mean(0)

    def weight(self, relevance: torch.Tensor) -> torch.Tensor:
        return torch.full_like(relevance, self.alpha)


@dataclass
class GateReading:
    """The gate's decision for a batch: α (batch,), the active edit each input reads (batch,), and the
    relevance to that edit per edited layer ({layer: (batch,)}, before the threshold)."""

    alpha: torch.Tensor
    chosen: torch.Tensor
    relevance: dict[int, torch.Tensor]


class KnowledgeInjection:
    """Hooks that shift the attention output of `layers` toward the knowledge of the active edits."""

    def __init__(
        self,
        backbone: Backbone,
        memory: Mapping[int, LayerKnowledge],
        top_k: int,
        gate: Gate,
        index: IndexConfig | None = None,
    ) -> None:
        self.backbone = backbone
        device = backbone.model.device
        # Retrieved states are read where the model runs: the memory's values live there once.
        self.memory = {
            layer: LayerKnowledge(knowledge.keys, knowledge.values.float().to(device))
            for layer, knowledge in memory.items()
        }
        self.indexes = {
            layer: CosineIndex(knowledge.keys, index, device) for layer, knowledge in self.memory.items()
        }
        rows = min(len(knowledge.keys) for knowledge in self.memory.values())
        if top_k > rows:
            rank_zero_warn(
                f"latent.top_k = {top_k} but the knowledge memory has {rows} rows: every edit retrieves all "
                f"{rows}"
            )
        self.top_k = top_k
        self.gate = gate
        self.edits: list[dict[int, EditKnowledge]] = []
        config = backbone.language_model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or backbone.hidden_size // self.heads)
        self.last_reading: GateReading | None = None
        """The gate's decision in the latest forward: what it let in."""
        self._kept_reading: tuple[tuple[torch.Tensor, torch.Tensor, int, int], GateReading] | None = None
        """The latest reading and what it was read from: the first edited layer's input, the prompt
        lengths, the input's version and the edit count. Every training step of an edit replays the same
        frozen input (the tail's prefix), whose reading does not change: it is read once."""

    @property
    def layers(self) -> list[int]:
        return list(self.memory)

    def knowledge_of(self, edit_states: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[int, EditKnowledge]:
        """The knowledge set of an edit from its states per layer: `sem` (1, hidden), the last prompt
        token's pre-attention state, retrieves; `last` (1, hidden), its own positive state, joins the set."""
        device = self.backbone.model.device
        knowledge = {}
        for layer in self.layers:
            sem, own = edit_states[layer]["sem"], edit_states[layer]["last"]
            _, ids = self.indexes[layer].search(sem, self.top_k)
            values = self.memory[layer].values
            states = torch.cat([values[ids[0].to(values.device)], own.float().to(values.device)])
            knowledge[layer] = EditKnowledge(states, own[0].float().to(device))
        return knowledge

    def add(self, knowledge: dict[int, EditKnowledge]) -> None:
        """Activate an edit's knowledge (sequential edits accumulate) until `clear`."""
        self.edits.append(knowledge)

    def clear(self) -> None:
        self.edits.clear()
        self.last_reading = None
        self._kept_reading = None

    def read_gate(self, queries: LayerStates) -> GateReading:
        """The gate's decision for inputs whose unedited states at the edited layers are `queries`."""
        keys = {layer: torch.stack([edit[layer].key for edit in self.edits]) for layer in self.layers}
        queries = {layer: queries[layer].to(keys[layer]) for layer in self.layers}
        best = self.gate.relevance(keys, queries).max(dim=-1)
        per_layer = {
            layer: self.gate.relevance({layer: keys[layer]}, {layer: queries[layer]}).gather(
                1, best.indices[:, None]
            )[:, 0]
            for layer in self.layers
        }
        return GateReading(self.gate.weight(best.values), best.indices, per_layer)

    def attend(self, layer: int, states: torch.Tensor, knowledge: torch.Tensor) -> torch.Tensor:
        """The layer's attention of `states` (batch, seq, hidden) over `knowledge` (batch, K, hidden),
        (batch, seq, hidden)."""
        part = self.backbone.layer_part
        decoder = self.backbone.decoder
        batch, seq, _ = states.shape

        def heads(projection: str, inputs: torch.Tensor, count: int) -> torch.Tensor:
            projected = part(layer, projection)(inputs.to(states.dtype))
            return projected.view(batch, -1, count, self.head_dim).transpose(1, 2)  # (batch, heads, n, d)

        query = heads(decoder.query, states, self.heads)
        repeat = self.heads // self.kv_heads  # grouped-query attention shares each key/value head
        key = heads(decoder.key, knowledge, self.kv_heads).repeat_interleave(repeat, dim=1)
        value = heads(decoder.value, knowledge, self.kv_heads).repeat_interleave(repeat, dim=1)
        weights = (query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(dim=-1)  # (b, h, s, K)
        mixed = (weights @ value).transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)
        return part(layer, decoder.attention_out)(mixed)

    def shift(self, layer: int, states: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The attention output `output` (batch, seq, hidden) moved toward the knowledge each input reads."""
        reading = self.last_reading
        if not self.edits or reading is None:
            return output
        if not bool(reading.alpha.any()):  # the gate is closed for the whole batch: nothing to read
            return output
        knowledge = torch.stack([edit[layer].states for edit in self.edits])[reading.chosen]  # (b, K + 1, h)
        injected = self.attend(layer, states, knowledge).to(output)
        return output + reading.alpha.to(output)[:, None, None] * (injected - output)

    @contextmanager
    def attached(self) -> Iterator[KnowledgeInjection]:
        with hooks() as attached:
            first = self.backbone.layers[self.layers[0]]
            attached.pre(first, self._read_gate, with_kwargs=True)
            for layer in self.layers:
                attention = self.backbone.layer_part(layer, self.backbone.decoder.attention)
                attached.post(attention, self._hook(layer), with_kwargs=True)
            yield self

    def _read_gate(self, _: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before the first edited layer: replay the edited layers with every edit paused and read the gate
        from the states there."""
        self.last_reading = None
        if not self.edits:
            return
        lengths = self.backbone.prompt_lengths
        if lengths is None:
            raise RuntimeError("knowledge injection needs the batch's prompt_length (run through Backbone)")
        hidden, others = layer_call(args, kwargs)
        source = (hidden, lengths, hidden._version, len(self.edits))
        if self._kept_reading is not None and same_source(self._kept_reading[0], source):
            self.last_reading = self._kept_reading[1]
            return
        states = unedited_attention_inputs(self.backbone, self.layers, hidden, others)
        self.last_reading = self.read_gate(
            {layer: at_positions(s, lengths - 1) for layer, s in states.items()}
        )
        self._kept_reading = (source, self.last_reading)

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            states = attention_input(args, kwargs)
            if isinstance(output, tuple):
                return (self.shift(layer, states, output[0]), *output[1:])
            return self.shift(layer, states, output)

        return hook


def same_source(kept: tuple[Any, ...], source: tuple[Any, ...]) -> bool:
    """The same tensors (the very objects: the tail's prefix is one tensor), unchanged since (`_version`),
    under as many edits: the unedited states there, hence the gate's reading, are the same."""
    return kept[0] is source[0] and kept[1] is source[1] and kept[2:] == source[2:]


@torch.no_grad()
def unedited_attention_inputs(
    backbone: Backbone, layers: list[int], hidden: torch.Tensor, kwargs: Mapping[str, Any]
) -> dict[int, torch.Tensor]:
    """The attention inputs (batch, seq, hidden) of decoder `layers` when the layers from the first of them
    run from `hidden` (the first one's input) with every pausable hook paused: no edit applied."""
    captured: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[layer] = attention_input(args, kwargs)

        return hook

    with paused(), hooks(pausable=False) as attached:
        for layer in layers:
            attached.pre(
                backbone.layer_part(layer, backbone.decoder.attention), read(layer), with_kwargs=True
            )
        run_layers(backbone.layers[layers[0] : layers[-1] + 1], hidden, kwargs)
    return captured
