"""Greedy decoding of short answers through full forwards, so that every backbone and every editing hook
runs as in scoring: all prompts of a batch decoded together, and the one-prompt-at-a-time reference that
the batched decoder must equal (tests) and outrun (benchmarks/mining_speed.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from unike_pl.backbones.encoding import sample_inputs

if TYPE_CHECKING:
    from unike_pl.backbones.loader import Backbone


@torch.no_grad()
def greedy_answers(backbone: Backbone, batch: Mapping[str, Any], max_new_tokens: int = 16) -> list[str]:
    """Greedy answers to each prompt of the batch (its targets are ignored), all rows decoded together.

    Full forwards (no key-value cache), so that any backbone and any editing hook runs as in scoring.
    Each row's new tokens follow its prompt, right-padded as any batch is: under causal attention a
    row's logits are those of the row alone. A row stops at EOS or at a token holding a newline; its
    text is cut at the first newline.
    """
    tokenizer = backbone.encoder.tokenizer
    lengths = batch["prompt_length"].to(batch["input_ids"].device)  # (batch,)
    rows = torch.arange(len(lengths), device=lengths.device)
    prompt_width = int(lengths.max())
    positions = torch.arange(prompt_width + max_new_tokens, device=lengths.device)
    prompts = batch["input_ids"][:, :prompt_width]
    ids = prompts.new_full((len(lengths), len(positions)), backbone.encoder.pad_token_id)
    ids[:, :prompt_width] = torch.where(
        positions[:prompt_width] < lengths[:, None], prompts, ids[:, :prompt_width]
    )
    images = {name: batch[name] for name in backbone.layout.image_inputs if name in batch}
    current, active = lengths.clone(), [True] * len(lengths)
    new_tokens: list[list[int]] = [[] for _ in active]
    for _ in range(max_new_tokens):
        width = int(current.max())
        step = {
            "input_ids": ids[:, :width],
            "attention_mask": (positions[:width] < current[:, None]).long(),
            "prompt_length": lengths,
            **images,
        }
        next_tokens = backbone(step)[rows, current - 1].argmax(-1).tolist()
        for row, token in enumerate(next_tokens):
            if not active[row]:
                continue
            if token == tokenizer.eos_token_id or "\n" in tokenizer.decode([token]):
                active[row] = False  # a newline's text would be cut there anyway
                if token != tokenizer.eos_token_id:
                    new_tokens[row].append(token)
                continue
            new_tokens[row].append(token)
            ids[row, current[row]] = token
            current[row] += 1
        if not any(active):
            break
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in new_tokens]
    return [text.split("\n")[0].strip() for text in texts]


@torch.no_grad()
def greedy_answers_one_by_one(
    backbone: Backbone, batch: Mapping[str, Any], max_new_tokens: int = 16
) -> list[str]:
    """The reference decoder: each prompt alone, one full forward per new token, same stopping rules."""
    tokenizer, answers = backbone.encoder.tokenizer, []
    for index in range(len(batch["input_ids"])):
        inputs = sample_inputs(batch, index, backbone.layout, backbone.model.config)
        ids, tokens = inputs["input_ids"], []
        prompt_length = ids.new_tensor([ids.shape[1]])
        for _ in range(max_new_tokens):
            step = {
                **inputs,
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "prompt_length": prompt_length,
            }
            token = int(backbone(step)[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            tokens.append(token)
            if "\n" in tokenizer.decode([token]):
                break
            ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0].strip())
    return answers
