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
def run_with_states(
    backbone: Backbone, layers: Sequence[int], encoded: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
    """Logits of an encoded batch of prompts + targets and, per layer, its states: `sem` and `ffn` at the
    last prompt token, `last` at the last token of prompt + target."""
    with layer_inputs(backbone, layers) as captured:
        logits = backbone(encoded)
    question_end = encoded["prompt_length"] - 1
    sequence_end = encoded["attention_mask"].sum(-1) - 1
    states = {
        layer: {
            "sem": at_positions(captured["attention"][layer], question_end).float().cpu(),
            "last": at_positions(captured["attention"][layer], sequence_end).float().cpu(),
            "ffn": at_positions(captured["ffn"][layer], question_end).float().cpu(),
        }
        for layer in layers
    }
    return logits, states


def extract_states(
    backbone: Backbone, layers: Sequence[int], encoded: Mapping[str, torch.Tensor]
) -> dict[int, dict[str, torch.Tensor]]:
    """The states of `run_with_states`, without the logits."""
    return run_with_states(backbone, layers, encoded)[1]


@torch.no_grad()
def wrong_answers(
    backbone: Backbone,
    examples: Sequence[Example],
    logits: torch.Tensor,
    labels: torch.Tensor,
    max_new_tokens: int,
) -> list[str | None]:
    """The model's greedy answer where its `logits` on the examples miss their target, else None."""
    right = exact_match(logits, labels).bool().tolist()
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
        encoded = backbone.encoder.encode(examples)
        # One forward both checks the answers and reads the positive states (Q + A_pos is the input).
        logits, positive = run_with_states(backbone, layers, encoded)
        negatives = wrong_answers(backbone, examples, logits, encoded["labels"], max_new_tokens)
        rows = [i for i, neg in enumerate(negatives) if neg is not None]
        if not rows:
            continue
        kept = [(samples[i], examples[i], negatives[i]) for i in rows]
        negative = extract_states(
            backbone,
            layers,
            backbone.encoder.encode([Example(ex.prompt, neg, ex.image) for _, ex, neg in kept]),
        )
        for layer in layers:
            states[layer]["sem"].append(positive[layer]["sem"][rows])
            states[layer]["pos"].append(positive[layer]["last"][rows])
            states[layer]["neg"].append(negative[layer]["last"])
            states[layer]["ffn"].append(positive[layer]["ffn"][rows])
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
