"""LDKE's Fast Localization: which decoder layers' FFNs carry a fact, scored cheaply or by causal tracing.

LDKE, like UniKE, edits a fact by adding neurons to the FFN of a few decoder layers, so the layers are
ranked by their *FFN output* m_l (the output of the `ffn_value` linear, what the extra neurons add to).
The objective is z = `answer_logits`, the summed logits of the answer tokens: the model's own answers are
confident, their probabilities saturate near 1 and hardly move under a change, while logits still do.

The fact's subject is the image. *Corruption* adds Gaussian noise of `noise` × the standard deviation of
the clean first-decoder-layer input at the image-token positions to that input (ROME's corrupted subject).
Three scorers, each (backbone, inputs, layers, config) -> (len(layers),), signed, higher = the fact
depends more on that layer:

- `causal_tracing` (the slow reference, after ROME): per noise sample, the corrupted run, then for each
  layer the corrupted run with that layer's clean FFN output restored. The score is the answer logits
  recovered (restored − corrupted): 1 clean + samples × (layers + 1) forward passes.
- `attribution` (the fast default, attribution patching): per noise sample, one clean forward and one
  corrupted forward + backward. The score is Σ g_l · (m_clean,l − m_corrupt,l), g_l = ∂z/∂m_l in the
  corrupted run: the first-order estimate of what restoring m_l recovers, i.e. of causal tracing.
- `gradient_activation` (gradient × activation, zero baseline): one clean forward + backward, Σ g_l · m_l:
  the first-order estimate of how much z drops when layer l's FFN output is removed.

`locate` puts them together: it scores the fact the model holds (its own answer to the edit prompt) and
returns the best `config.layers` candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.encoding import EXAMPLES, IGNORE_INDEX, Example, on_device
from unike_pl.backbones.loader import Backbone
from unike_pl.hooks import hooks
from unike_pl.knowledge.states import attention_input
from unike_pl.settings import require_positive

Scorer = Callable[[Backbone, Mapping[str, Any], Sequence[int], "LocalizationConfig"], torch.Tensor]


@dataclass
class LocalizationConfig:
    """How LDKE's Fast Localization picks the layers to edit for one fact."""

    scorer: str = "attribution"
    """Layer scorer: attribution (fast, default), gradient_activation, or causal_tracing (slow reference)."""
    layers: int = 2
    """How many layers are edited per fact: the best-scoring of the candidates."""
    noise: float = 3.0
    """Corruption: Gaussian noise of this many standard deviations of the clean image-token states."""
    samples: int = 1
    """Noise samples averaged (attribution and causal tracing; 5 is usual for the reference)."""
    seed: int = 0
    """Seed of the corruption noise."""

    def __post_init__(self) -> None:
        require_positive("localization", layers=self.layers, samples=self.samples)
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown layer scorer {self.scorer!r}; valid: {', '.join(SCORERS)}")
        if self.layers < 1 or self.samples < 1:
            raise ValueError(f"layers ({self.layers}) and samples ({self.samples}) must be at least 1")
        if self.noise < 0:
            raise ValueError(f"noise must not be negative, got {self.noise}")


# --- objective ------------------------------------------------------------------------------------
def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed logits of the answer tokens where they are predicted (logit t predicts label t + 1)."""
    targets = labels[:, 1:]
    answer = targets != IGNORE_INDEX
    return logits[:, :-1][answer].gather(-1, targets[answer].unsqueeze(-1)).sum()


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32 at least: half-precision sums and differences lose the effects measured."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _objective(backbone: Backbone, inputs: Mapping[str, Any]) -> torch.Tensor:
    return answer_logits(_wide(backbone(inputs)), inputs["labels"])


# --- hooks ----------------------------------------------------------------------------------------
@contextmanager
def ffn_outputs(
    backbone: Backbone, layers: Sequence[int], replace: Mapping[int, torch.Tensor] | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield {layer: FFN output} filled by each forward inside the block; layers in `replace` output the
    given tensor instead (recorded as such). The hooks are removed on exit."""
    replace = replace or {}
    seen: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def record(_: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            # (batch, seq, hidden), or (batch · seq, hidden) in decoders that flatten before the FFN (OPT)
            seen[layer] = replace.get(layer, output)
            return seen[layer]

        return record

    with hooks() as attached:
        for layer in layers:
            attached.post(backbone.layer_part(layer, backbone.decoder.ffn_value), hook(layer))
        yield seen


@contextmanager
def first_layer_input(
    backbone: Backbone, change: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {"hidden": first decoder layer input (batch, seq, hidden)} of the latest forward inside the
    block, after `change` rewrote it (if given). The hook is removed on exit."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        hidden = attention_input(args, kwargs)
        if change is not None:
            hidden = change(hidden)
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hidden}
        seen["hidden"] = hidden
        return args, kwargs

    with hooks() as attached:
        attached.pre(backbone.layers[0], hook, with_kwargs=True)
        yield seen


# --- corruption -----------------------------------------------------------------------------------
class Corruption:
    """Seeded Gaussian noise on the image-token positions of the first decoder layer's input, scaled by
    `noise` × the standard deviation of the clean input there: the image is the subject of a visual fact."""

    def __init__(
        self, clean_input: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, noise: float, seed: int
    ):
        if clean_input.shape[:2] != input_ids.shape:
            raise ValueError(
                f"first-layer input {tuple(clean_input.shape[:2])} does not line up with the input ids "
                f"{tuple(input_ids.shape)}: cannot find the image tokens"
            )
        image = (input_ids == image_token_id).to(clean_input.device)  # (batch, seq)
        if not bool(image.any()):
            raise ValueError("the fact has no image tokens to corrupt; localization needs an image")
        self.image = image[..., None]  # (batch, seq, 1)
        self.scale = noise * clean_input[image].float().std()
        self.like = clean_input
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @classmethod
    def of(
        cls,
        backbone: Backbone,
        inputs: Mapping[str, Any],
        clean_input: torch.Tensor,
        config: LocalizationConfig,
    ) -> Corruption:
        return cls(
            clean_input, inputs["input_ids"], backbone.encoder.image_token_id, config.noise, config.seed
        )

    def draw(self) -> torch.Tensor:
        """One noise tensor (batch, seq, hidden), zero away from the image tokens."""
        noise = torch.randn(self.like.shape, generator=self.generator).to(self.like)
        return noise * self.scale.to(self.like) * self.image

    def draws(self, samples: int) -> Iterator[torch.Tensor]:
        return (self.draw() for _ in range(samples))


@torch.no_grad()
def _clean_run(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The clean first-layer input and FFN outputs of `layers`."""
    with first_layer_input(backbone) as first, ffn_outputs(backbone, layers) as outputs:
        backbone(inputs)
    return first["hidden"], outputs


def _ffn_gradients(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int], shift: torch.Tensor | float = 0.0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FFN outputs m_l and gradients ∂z/∂m_l of `layers` in one forward and backward pass, with `shift`
    added to the first layer's input."""

    # The backbone is frozen: the shifted first-layer input becomes a leaf that requires grad, so that
    # the graph reaches every FFN output (and the gradient flows through all later layers).
    def as_leaf(hidden: torch.Tensor) -> torch.Tensor:
        return (hidden + shift).detach().requires_grad_(True)

    with torch.enable_grad(), first_layer_input(backbone, as_leaf), ffn_outputs(backbone, layers) as seen:
        objective = _objective(backbone, inputs)
        outputs = [seen[layer] for layer in layers]
        gradients = torch.autograd.grad(objective, outputs)
    return [output.detach() for output in outputs], list(gradients)


def _dot(gradients: Sequence[torch.Tensor], directions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ g · d per layer -> (layers,), float32 on the CPU."""
    return (
        torch.stack([(_wide(g) * _wide(d)).sum() for g, d in zip(gradients, directions, strict=True)])
        .float()
        .cpu()
    )


# --- scorers --------------------------------------------------------------------------------------
def attribution(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int], config: LocalizationConfig
) -> torch.Tensor:
    """Attribution patching: Σ ∂z/∂m_l · (m_clean,l − m_corrupt,l) in the corrupted run, averaged over
    `config.samples` noise samples; first-order estimate of causal tracing."""
    first, clean = _clean_run(backbone, inputs, layers)
    corruption = Corruption.of(backbone, inputs, first, config)
    total = torch.zeros(len(layers))
    for noise in corruption.draws(config.samples):
        corrupt, gradients = _ffn_gradients(backbone, inputs, layers, shift=noise)
        total += _dot(gradients, [clean[layer] - m for layer, m in zip(layers, corrupt, strict=True)])
    return total / config.samples


def gradient_activation(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int], config: LocalizationConfig
) -> torch.Tensor:
    """Σ ∂z/∂m_l · m_l on the clean run: to first order, the drop of z if layer l's FFN output were
    removed."""
    outputs, gradients = _ffn_gradients(backbone, inputs, layers)
    return _dot(gradients, outputs)


@torch.no_grad()
def causal_tracing(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int], config: LocalizationConfig
) -> torch.Tensor:
    """Answer logits recovered by restoring each layer's clean FFN output in the corrupted run, averaged
    over `config.samples` noise samples."""
    first, clean = _clean_run(backbone, inputs, layers)
    corruption = Corruption.of(backbone, inputs, first, config)
    recovered = torch.zeros(len(layers))
    for noise in corruption.draws(config.samples):
        with first_layer_input(backbone, lambda hidden, noise=noise: hidden + noise):
            corrupted = _objective(backbone, inputs)
            for index, layer in enumerate(layers):
                with ffn_outputs(backbone, [layer], replace={layer: clean[layer]}):
                    recovered[index] += float(_objective(backbone, inputs) - corrupted)
    return recovered / config.samples


SCORERS: dict[str, Scorer] = {
    "attribution": attribution,
    "gradient_activation": gradient_activation,
    "causal_tracing": causal_tracing,
}


def layer_scores(
    backbone: Backbone, inputs: Mapping[str, Any], layers: Sequence[int], config: LocalizationConfig
) -> torch.Tensor:
    """Scores (len(layers),) of `layers` for the fact in `inputs` (a batch of one), by `config.scorer`."""
    missing = [layer for layer in layers if not 0 <= layer < backbone.num_layers]
    if missing:
        raise ValueError(f"the backbone has no layer {missing[0]} (it has {backbone.num_layers})")
    return SCORERS[config.scorer](backbone, inputs, layers, config)


# --- choosing layers ------------------------------------------------------------------------------
def top_layers(scores: torch.Tensor, layers: Sequence[int], count: int) -> list[int]:
    """The `count` best-scoring of `layers` (scores[i] belongs to layers[i]), in increasing layer order."""
    if len(scores) != len(layers):
        raise ValueError(f"{len(scores)} scores for {len(layers)} layers")
    best = scores.topk(min(count, len(layers))).indices.tolist()
    return sorted(layers[i] for i in best)


def agreement(fast: torch.Tensor, reference: torch.Tensor, count: int) -> float:
    """Share of the reference's top-`count` layers that the fast scorer also puts in its top `count`
    (both score the same layers)."""
    layers = range(len(reference))
    return len(set(top_layers(fast, layers, count)) & set(top_layers(reference, layers, count))) / count


def own_answer_fact(backbone: Backbone, inputs: Mapping[str, Any], max_new_tokens: int = 8) -> dict[str, Any]:
    """The fact the model holds about an edit: its own greedy answer to the edit prompt, with the edit image.

    `inputs` is an encoded edit of one sample that kept its `Example` (`encode(..., keep_examples=True)`);
    the result re-encodes `Example(prompt, own answer, image)` on the same device. If the model answers
    nothing (EOS or a newline first), the edit target stands in for its answer.
    """
    if EXAMPLES not in inputs:
        raise ValueError("own_answer_fact needs inputs encoded with keep_examples=True")
    edit: Example = inputs[EXAMPLES][0]
    answer = backbone.generate_answers(inputs, max_new_tokens)[0] or edit.target
    fact = backbone.encoder.encode([Example(edit.prompt, answer, edit.image)], keep_examples=True)
    return on_device(fact, inputs["input_ids"].device)


def locate(
    backbone: Backbone, inputs: Mapping[str, Any], candidates: Sequence[int], config: LocalizationConfig
) -> list[int]:
    """The `config.layers` candidate layers (sorted) that carry the fact the model holds about this edit."""
    fact = own_answer_fact(backbone, inputs)
    return top_layers(layer_scores(backbone, fact, candidates, config), candidates, config.layers)
