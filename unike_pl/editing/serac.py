"""SERAC (Mitchell et al., "Memory-Based Model Editing at Scale", ICML 2022) for multimodal inputs.

Edits are kept in an explicit memory; the base model never changes. For every input a trained scope
classifier scores each stored edit; when the best score passes the threshold, a trained counterfactual model
answers with that edit written before the prompt (IKE's prompt prefix, `unike_pl.ike_format`):

    New Fact: {edit prompt} {edit target}\\nPrompt: {the input's prompt}

otherwise the unchanged base model answers. Logits and greedy answers are merged per sample (the router
LDKE shares, `unike_pl.editing.routing`).

- Scope features come from the frozen base model, read from the prompt (image queries included, target
  excluded): the mean and the last-token state of one decoder layer's output. Since the image query tokens
  are part of the prompt, the same question about another picture reads differently.
- The scope classifier maps features to unit embeddings with a small MLP; the score of (edit, input) is
  sigmoid(scale · cosine + bias), scale and bias trained with it.
- The counterfactual model is a trainable copy of the backbone (or a smaller model with the same tokenizer
  and prompt format): for a large backbone the copy doubles the weights held in memory.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unike_pl.backbones.encoding import EXAMPLES, IGNORE_INDEX, Example
from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone
from unike_pl.editing.base import AnsweringModel, Editor, EditReport
from unike_pl.editing.context import Context, ContextView, end_aligned
from unike_pl.editing.routing import EditRouter, RoutedAnswers, SelectedRows
from unike_pl.ike_format import prompt_prefix
from unike_pl.knowledge.states import prompt_states
from unike_pl.losses import answer_loss, kl_to_reference
from unike_pl.metrics import names
from unike_pl.metrics.scorers import exact_match, token_accuracy


@dataclass
class ScopeConfig:
    """The scope classifier: which edits, if any, an input falls under."""

    feature_layer: int = -1
    """Decoder layer whose output states describe an input (negative: counted from the last)."""
    hidden_dim: int = 256
    """Width of the MLP's hidden layer."""
    embedding_dim: int = 128
    """Size of the embeddings compared by cosine."""
    threshold: float = 0.5
    """An input is in an edit's scope when their score exceeds this."""
    initial_scale: float = 10.0
    """Initial multiplier of the cosine (trained)."""
    initial_bias: float = -5.0
    """Initial bias of the score's logit (trained): unrelated inputs start out of scope."""
    learning_rate: float = 1e-3
    """Adam learning rate of the classifier."""


@dataclass
class CounterfactualConfig:
    """The counterfactual model: answers in-scope inputs with the edit written before the prompt."""

    model: str | None = None
    """A smaller model with the backbone's tokenizer and prompt format (local folder or hub id; loaded with
    the backbone's dtype); None trains a copy of the backbone itself."""
    learning_rate: float = 3e-4
    """Adam learning rate of the counterfactual model."""
    train_vision: bool = False
    """Also train its vision encoder and image-to-text parts (off: only its language model learns to read
    the edit, which is cheaper; the image is read as the base model reads it)."""
    locality_weight: float = 1.0
    """Weight of the loss that keeps the base model's answers on locality inputs given an unrelated edit
    (what the counterfactual model answers when the classifier wrongly routes them); 0 turns it off."""


# --- scope features and classifier -------------------------------------------------------------------


def scope_features(
    backbone: Backbone, batch: Mapping[str, Any], layer: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's logits on `batch` and its scope features (batch, 2 * hidden): the mean and the last
    of `layer`'s output states over the prompt positions (image queries included, the target excluded)."""
    read = prompt_states(backbone, batch, layer)
    return read.logits, torch.cat([read.mean(read.in_prompt), read.last], dim=-1)


class ScopeClassifier(nn.Module):
    """Scores (edit, input) pairs from their scope features: sigmoid(scale · cos(f(edit), f(input)) + bias)
    with f a small MLP."""

    def __init__(self, feature_size: int, config: ScopeConfig) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.LayerNorm(feature_size),
            nn.Linear(feature_size, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.embedding_dim),
        )
        self.log_scale = nn.Parameter(torch.tensor(float(config.initial_scale)).log())
        self.bias = nn.Parameter(torch.tensor(float(config.initial_bias)))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (n, embedding_dim) of scope features (n, feature_size)."""
        return F.normalize(self.embed(features.float()), dim=-1)

    def logits(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Score logits (queries, keys) between input embeddings and edit embeddings."""
        return self.log_scale.exp() * queries @ keys.T + self.bias


# --- counterfactual model ----------------------------------------------------------------------------


def make_trainable(model: Backbone, train_vision: bool) -> Backbone:
    """Unfreeze the language model of `model`, or all of it with `train_vision`."""
    (model.model if train_vision else model.language_model).requires_grad_(True)
    return model


def trainable_copy(backbone: Backbone, train_vision: bool = False) -> Backbone:
    """An independent, trainable copy of `backbone` sharing its prompt encoder. Its weights are separate:
    for a large backbone it doubles the memory the weights take (`CounterfactualConfig.model` names a
    smaller model instead)."""
    return make_trainable(Backbone(copy.deepcopy(backbone.model), backbone.encoder), train_vision)


def load_counterfactual(backbone: Backbone, base: BackboneConfig, config: CounterfactualConfig) -> Backbone:
    """The trainable counterfactual model: a copy of `backbone`, or `config.model` loaded like it. The
    logits of the two models are merged per sample, so a separate model must tokenize like the backbone."""
    model = config.model
    if model is None:
        return trainable_copy(backbone, config.train_vision)
    counterfactual = load_backbone(replace(base, name_or_path=model))
    if counterfactual.encoder.tokenizer.get_vocab() != backbone.encoder.tokenizer.get_vocab():
        raise ValueError(f"counterfactual model {model!r} does not share the backbone's tokenizer")
    if counterfactual.encoder.prompt_format != backbone.encoder.prompt_format:
        raise ValueError(
            f"counterfactual model {model!r} uses prompt format "
            f"{counterfactual.encoder.prompt_format.name!r}, the backbone "
            f"{backbone.encoder.prompt_format.name!r}; set backbone.prompt_format for both"
        )
    return make_trainable(counterfactual, config.train_vision)


class EditFact:
    """One stored edit as the knowledge of a `ContextView`: its fact written before every prompt (no
    demonstrations: the counterfactual model is trained to read the fact alone)."""

    def __init__(self, edit: Example) -> None:
        self.context = Context(edit.prompt, (), prompt_prefix(edit.prompt, edit.target))

    def contexts(self, prompts: Sequence[str]) -> list[Context | None]:
        return [self.context] * len(prompts)


def with_fact(example: Example, edit: Example) -> Example:
    """`example` with `edit`'s fact written before its prompt (what the counterfactual model reads)."""
    return replace(example, prompt=prompt_prefix(edit.prompt, edit.target) + example.prompt)


# --- the editor --------------------------------------------------------------------------------------


class SERACEditor(Editor):
    """Stores edits and routes each input to the counterfactual model with its in-scope edit's fact, or to
    the base model (`RoutedAnswers`). The base model is only read, so `restore` (emptying the memory) leaves
    it exactly as it was."""

    def __init__(
        self,
        backbone: Backbone,
        classifier: ScopeClassifier,
        counterfactual: Backbone,
        scope: ScopeConfig,
    ) -> None:
        self.backbone = backbone
        self.classifier = classifier
        self.counterfactual = counterfactual
        self.scope = scope
        self.edits: list[Example] = []
        self.router = EditRouter(self.features, classifier, scope.threshold)  # keys: scope embeddings

    def features(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return scope_features(self.backbone, batch, self.scope.feature_layer)

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        start = time.perf_counter()
        if EXAMPLES not in inputs:
            raise ValueError("SERAC stores the edit's example: encode it with keep_examples=True")
        self.router.add(inputs)
        self.edits.append(inputs[EXAMPLES][0])
        with self.answering() as model, torch.no_grad():
            success = bool(exact_match(model(inputs), inputs["labels"]).all())
        return EditReport(0, time.perf_counter() - start, success)

    def restore(self) -> None:
        self.edits = []
        self.router.clear()

    @contextmanager
    def answering(self) -> Iterator[AnsweringModel]:
        yield RoutedAnswers(self.router, self.path, self.backbone)

    def view(self, edit: int) -> ContextView:
        """The counterfactual model answering with stored edit `edit` before the prompt."""
        return ContextView(self.counterfactual, EditFact(self.edits[edit]))

    def path(self, edit: int) -> SelectedRows:
        """The rows routed to `edit`, answered by its view alone (their facts differ from edit to edit)."""
        return SelectedRows(self.view(edit))


# --- training ----------------------------------------------------------------------------------------

POSITIVE_CASES = (names.EDIT, names.REPHRASE, names.IMAGE_REPHRASE)
"""Inputs in their own record's edit scope (any other record's edit is out of it)."""


@dataclass
class ScopeLoss:
    loss: torch.Tensor
    in_scope: dict[str, torch.Tensor]
    """Per case, (batch,) bools: the input was routed as it should be by its own record's edit alone
    (above the threshold for the target cases, below it for the locality cases)."""


def scope_loss(
    classifier: ScopeClassifier, features: Mapping[str, torch.Tensor], threshold: float
) -> ScopeLoss:
    """Balanced binary cross-entropy over every (edit, input) pair of a batch of records.

    Positive: (edit, its own edit / rephrase / image rephrase). Negative: (edit, its own text and multimodal
    locality inputs) and (edit, any input of another record of the batch).
    """
    keys = classifier.encode(features[names.EDIT])  # (batch, dim)
    eye = torch.eye(len(keys), device=keys.device)
    logits, labels = [], []
    correct = {}
    for case in names.CASES:
        pair_logits = classifier.logits(classifier.encode(features[case]), keys)  # (inputs, edits)
        pair_labels = eye if case in POSITIVE_CASES else torch.zeros_like(eye)
        logits.append(pair_logits.flatten())
        labels.append(pair_labels.flatten())
        own = torch.sigmoid(pair_logits.diagonal().detach()) > threshold
        correct[case] = own if case in POSITIVE_CASES else ~own
    logits_all, labels_all = torch.cat(logits), torch.cat(labels)
    losses = F.binary_cross_entropy_with_logits(logits_all, labels_all, reduction="none")
    positive = labels_all > 0.5
    loss = (losses[positive].mean() + losses[~positive].mean()) / 2
    return ScopeLoss(loss, correct)


@dataclass
class CounterfactualLoss:
    target: torch.Tensor
    """Cross-entropy of the edit target (then EOS) given the fact, on edit, rephrase and image rephrase."""
    locality: torch.Tensor
    """KL divergence from the base model's answer distribution on locality inputs given an unrelated fact."""
    target_accuracy: torch.Tensor
    """(3 * batch,) teacher-forced token accuracy of the target."""
    locality_agreement: torch.Tensor
    """(2 * batch,) share of answer positions where the counterfactual and base top-1 agree."""


def counterfactual_loss(
    counterfactual: Backbone,
    cases: Mapping[str, Mapping[str, Any]],
    base_logits: Mapping[str, torch.Tensor],
) -> CounterfactualLoss:
    """Losses of the counterfactual model on a batch of records, each input with its record's fact."""
    encoder = counterfactual.encoder
    device = cases[names.EDIT]["input_ids"].device
    edits = list(cases[names.EDIT][EXAMPLES])

    def encode(examples: list[Example], end_with_eos: bool) -> dict[str, Any]:
        encoded = encoder.encode(examples, end_with_eos=end_with_eos)
        longest = int(encoded["attention_mask"].sum(-1).max())
        if longest > counterfactual.max_positions:
            raise ValueError(
                f"an input with its fact takes {longest} positions, more than the counterfactual model's "
                f"{counterfactual.max_positions}"
            )
        return {key: value.to(device) for key, value in encoded.items()}

    def facts_before(case: str) -> list[Example]:
        return [with_fact(ex, edit) for ex, edit in zip(cases[case][EXAMPLES], edits, strict=True)]

    targets = encode(
        [example for case in POSITIVE_CASES for example in facts_before(case)],
        end_with_eos=encoder.tokenizer.eos_token_id is not None,
    )
    target_logits = counterfactual(targets)
    target = answer_loss(target_logits, targets["labels"])
    accuracy = token_accuracy(target_logits.detach(), targets["labels"])

    kl, agreement = [], []
    for case in names.LOCALITY_CASES:
        original = cases[case]
        contexted = encode(facts_before(case), end_with_eos=False)
        logits = end_aligned(
            counterfactual(contexted), contexted["attention_mask"], original["attention_mask"].to(device)
        )
        answer = original["labels"][:, 1:].to(device) != IGNORE_INDEX  # logit t predicts label t + 1
        ours, base = logits[:, :-1], base_logits[case][:, :-1]
        kl.append(kl_to_reference(base, ours, answer))
        agree = (ours[answer].argmax(-1) == base[answer].argmax(-1)).float()
        rows = answer.nonzero()[:, 0]
        agreement.append(
            torch.zeros(len(answer), device=device).index_add_(0, rows, agree) / answer.sum(-1).clamp(min=1)
        )
    return CounterfactualLoss(target, torch.stack(kl).mean(), accuracy, torch.cat(agreement))
