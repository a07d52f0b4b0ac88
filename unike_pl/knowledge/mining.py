"""Mine (Q, A_pos, A_neg) triplets where the base model is wrong, and extract their states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from unike_pl.backbones.encoding import Example
from unike_pl.backbones.loader import Backbone
from unike_pl.data.cases import EditSample
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory, Triplet
from unike_pl.knowledge.states import at_positions, layer_inputs
from unike_pl.metrics import names
from unike_pl.metrics.scorers import exact_match, normalize_answer


@torch.no_grad()
def extract_states(
    backbone: Backbone, layers: Sequence[int], encoded: Mapping[str, torch.Tensor]
) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer: `sem` and `ffn` at the last prompt token, `last` at the last token of prompt + target,
    for an encoded batch of prompts + targets."""
    with layer_inputs(backbone, layers) as captured:
        backbone(encoded)
    question_end = encoded["prompt_length"] - 1
    sequence_end = encoded["attention_mask"].sum(-1) - 1
    return {
        layer: {
            "sem": at_positions(captured["attention"][layer], question_end).float().cpu(),
            "last": at_positions(captured["attention"][layer], sequence_end).float().cpu(),
            "ffn": at_positions(captured["ffn"][layer], question_end).float().cpu(),
        }
        for layer in layers
    }


@torch.no_grad()
def wrong_answers(backbone: Backbone, examples: Sequence[Example], max_new_tokens: int) -> list[str | None]:
    """The model's greedy answer where it does not produce the example's target, else None."""
    encoded = backbone.encoder.encode(examples)
    right = exact_match(backbone(encoded), encoded["labels"]).bool().tolist()
    wrong = [i for i, ok in enumerate(right) if not ok]
    answers: list[str | None] = [None] * len(examples)
    if wrong:
        generated = backbone.generate_answers(
            backbone.encoder.encode([examples[i] for i in wrong]), max_new_tokens
        )
        for i, answer in zip(wrong, generated, strict=True):
            # Teacher forcing can miss a target that greedy decoding still reaches: that is no hallucination.
            if answer.strip() and normalize_answer(answer) != normalize_answer(examples[i].target):
                answers[i] = answer
    return answers


def mine_memory(
    backbone: Backbone,
    layers: Sequence[int],
    samples: Sequence[EditSample],
    file: str,
    max_new_tokens: int = 16,
) -> KnowledgeMemory:
    """The triplets of every case of `samples` that the model answers wrongly, with their states."""
    triplets: list[Triplet] = []
    states: dict[int, dict[str, list[torch.Tensor]]] = {
        layer: {k: [] for k in STATE_KINDS} for layer in layers
    }
    for case in names.CASES:
        examples = [sample.cases[case] for sample in samples]
        negatives = wrong_answers(backbone, examples, max_new_tokens)
        kept = [
            (s, ex, neg) for s, ex, neg in zip(samples, examples, negatives, strict=True) if neg is not None
        ]
        if not kept:
            continue
        encode = backbone.encoder.encode
        positive = extract_states(backbone, layers, encode([ex for _, ex, _ in kept]))
        negative = extract_states(
            backbone, layers, encode([Example(ex.prompt, neg, ex.image) for _, ex, neg in kept])
        )
        for layer in layers:
            states[layer]["sem"].append(positive[layer]["sem"])
            states[layer]["pos"].append(positive[layer]["last"])
            states[layer]["neg"].append(negative[layer]["last"])
            states[layer]["ffn"].append(positive[layer]["ffn"])
        triplets += [Triplet(file, s.record, case, ex.prompt, ex.target, neg) for s, ex, neg in kept]
    hidden = backbone.hidden_size
    return KnowledgeMemory(
        list(layers),
        {
            layer: {k: torch.cat(v) if v else torch.zeros(0, hidden) for k, v in kinds.items()}
            for layer, kinds in states.items()
        },
        triplets,
    )
