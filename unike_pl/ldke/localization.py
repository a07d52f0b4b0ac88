"""LDKE's Fast Localization: which decoder layers carry a given fact, scored cheaply or by causal tracing.

A layer's *update* is what it adds to the residual stream, Δ_l = output_l − input_l (its attention and FFN
together). Both scorers rank layers by how much the answer depends on their update:

- `gradient_activation_scores` (fast, the default): one forward and one backward pass. The score is
  |Σ_t g_l,t · Δ_l,t| with g_l = ∂ z(answer) / ∂ output_l, z the summed logits of the answer tokens: the
  first-order estimate of how much they would change without layer l's update. (Logits, not the
  log-likelihood, whose gradient vanishes where the model is confident: exactly the facts to edit.)
- `causal_tracing_scores` (the slow reference, after ROME's causal tracing): the prompt (image queries and
  question) is corrupted with Gaussian noise at the first layer's input; then, one layer at a time, the
  layer's clean update is restored inside the corrupted run. The score is the answer probability that the
  restoration recovers, averaged over noise samples: 1 + samples × (layers + 1) forward passes.

Scores are (layers,) tensors, higher = the layer carries more of the fact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.encoding import IGNORE_INDEX
from unike_pl.backbones.loader import Backbone
from unike_pl.knowledge.states import attention_input
from unike_pl.losses import answer_loss_sum

Scorer = Callable[[Backbone, Mapping[str, Any]], torch.Tensor]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _replace_input(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor) -> tuple[Any, Any]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def _layer_io(
    backbone: Backbone,
    first_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
    outputs: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
    """Hooks on every decoder layer: record its input and output hidden states; optionally rewrite the
    first layer's input (`first_input(hidden)`) and any layer's output (`outputs(layer, input, output)`)."""
    seen: dict[str, dict[int, torch.Tensor]] = {"input": {}, "output": {}}

    def before(layer: int):
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden = attention_input(args, kwargs)
            if layer == 0 and first_input is not None:
                hidden = first_input(hidden)
                args, kwargs = _replace_input(args, kwargs, hidden)
            seen["input"][layer] = hidden
            return args, kwargs

        return hook

    def after(layer: int):
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            hidden = _hidden(output)
            if outputs is not None:
                hidden = outputs(layer, seen["input"][layer], hidden)
                output = _with_hidden(output, hidden)
            seen["output"][layer] = hidden
            return output

        return hook

    with ExitStack() as stack:
        for layer, module in enumerate(backbone.layers):
            handles = (
                module.register_forward_pre_hook(before(layer), with_kwargs=True),
                module.register_forward_hook(after(layer), with_kwargs=True),
            )
            for handle in handles:
                stack.callback(handle.remove)
        yield seen


def answer_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) summed over the answer tokens of a batch of one."""
    loss, _ = answer_loss_sum(logits, labels)
    return -loss


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed logits of the answer tokens where they are predicted (logit t predicts label t + 1)."""
    targets = labels[:, 1:]
    answer = targets != IGNORE_INDEX
    return logits[:, :-1][answer].gather(-1, targets[answer].unsqueeze(-1)).sum()


def gradient_activation_scores(backbone: Backbone, inputs: Mapping[str, Any]) -> torch.Tensor:
    """|Σ_t ∂ z(answer)/∂output_l · Δ_l| per layer, from one forward and one backward pass."""
    return gradient_activation_effects(backbone, inputs).abs()


def gradient_activation_effects(backbone: Backbone, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Σ_t ∂ z(answer)/∂output_l · Δ_l per layer (signed): to first order, how much the answer logits
    would drop if layer l's update were removed."""
    # The backbone is frozen: the first layer's input is made a leaf that requires grad, so that the
    # graph reaches every layer output.
    with (
        torch.enable_grad(),
        _layer_io(backbone, first_input=lambda h: h.detach().requires_grad_(True)) as seen,
    ):
        objective = answer_logits(backbone(inputs), inputs["labels"])
        layers = range(backbone.num_layers)
        outputs = [seen["output"][layer] for layer in layers]
        gradients = torch.autograd.grad(objective, outputs)
    return torch.stack(
        [
            (gradient * (seen["output"][layer] - seen["input"][layer])).sum().detach()
            for layer, gradient in zip(layers, gradients, strict=True)
        ]
    ).float()


@torch.no_grad()
def causal_tracing_scores(
    backbone: Backbone,
    inputs: Mapping[str, Any],
    noise: float = 3.0,
    samples: int = 5,
    seed: int = 0,
) -> torch.Tensor:
    """The answer probability recovered by restoring each layer's clean update in a run whose prompt was
    corrupted with Gaussian noise of `noise` × the standard deviation of the clean first-layer inputs."""
    labels = inputs["labels"]
    with _layer_io(backbone) as seen:
        backbone(inputs)
    clean_update = {layer: seen["output"][layer] - seen["input"][layer] for layer in seen["input"]}
    first = seen["input"][0]  # (1, seq, hidden)
    prompt = torch.arange(first.shape[1], device=first.device) < inputs["prompt_length"].to(first.device)[0]
    scale = noise * first[:, prompt].float().std()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    recovered = torch.zeros(backbone.num_layers)
    for _ in range(samples):
        corruption = torch.randn(first.shape, generator=generator).to(first) * scale * prompt[None, :, None]

        def corrupt(hidden: torch.Tensor, corruption: torch.Tensor = corruption) -> torch.Tensor:
            return hidden + corruption

        with _layer_io(backbone, first_input=corrupt):
            corrupted = answer_log_likelihood(backbone(inputs), labels).exp()
        for layer in range(backbone.num_layers):

            def restore(
                index: int, before: torch.Tensor, after: torch.Tensor, layer: int = layer
            ) -> torch.Tensor:
                return before + clean_update[index] if index == layer else after

            with _layer_io(backbone, first_input=corrupt, outputs=restore):
                restored = answer_log_likelihood(backbone(inputs), labels).exp()
            recovered[layer] += float(restored - corrupted)
    return recovered / samples


def top_layers(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` best-scoring layers, in increasing layer order."""
    return sorted(scores.topk(min(count, len(scores))).indices.tolist())


def agreement(fast: torch.Tensor, reference: torch.Tensor, count: int) -> float:
    """Share of the reference's top-`count` layers that the fast scorer also puts in its top `count`."""
    return len(set(top_layers(fast, count)) & set(top_layers(reference, count))) / count
