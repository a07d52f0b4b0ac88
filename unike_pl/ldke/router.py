"""LDKE's Disentanglement Classifier: route each input to the edited model or to the original one.

An edit must reach its rephrases, other pictures of the same scene and the questions it implies (Causal
Misalignment when it does not), and must not reach inputs that merely look close: the same picture asked
about something else, a similar scene asked the same (Feature Entanglement when it does). The classifier
scores (edit, input) pairs from features the frozen original model computes anyway:

- image features: the mean of one decoder layer's output states over the image-token positions (in a
  causal decoder whose image tokens come first, they depend on the picture alone); zeros without an image;
- text features: the mean over the prompt's text positions and the last prompt state of the same layer
  (the question, read with the picture).

Each modality is projected separately; the pair is scored by an MLP over the element-wise products and
absolute differences of the projections (plus whether both have an image), so "same image, other question"
and "other image, same question" are separable rather than averaged into one similarity.

Routing and the merging of answers are SERAC's (`unike_pl.editing.routing`), with this classifier.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.data.cases import EditBatch
from unike_pl.editing.base import AnsweringModel, Editor, EditReport
from unike_pl.editing.routing import EditRouter, RoutedAnswers, WholeBatch
from unike_pl.knowledge.states import prompt_states
from unike_pl.metrics import names


@dataclass
class RouterConfig:
    """The Disentanglement Classifier and its training."""

    feature_layer: int = -2
    """Decoder layer whose output states give the features (negative: counted from the last)."""
    width: int = 128
    """Size of each modality's projection and of the MLP's hidden layer."""
    threshold: float = 0.5
    """An input takes the edited path when its score against some stored edit exceeds this."""
    learning_rate: float = 1e-3
    """AdamW learning rate."""


def router_features(backbone: Backbone, batch: EditBatch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original model's logits on `batch` and its router features (batch, 3 * hidden + 1):
    image mean, text mean, last prompt state, has-image flag."""
    read = prompt_states(backbone, batch, layer)
    image = batch["input_ids"].to(read.states.device) == backbone.encoder.image_token_id
    has_image = image.any(1, keepdim=True).float()
    return read.logits, torch.cat(
        [read.mean(image), read.mean(read.in_prompt & ~image), read.last, has_image], dim=-1
    )


class DisentanglementClassifier(nn.Module):
    """Scores (edit, input) pairs of router features: logits > 0 mean "in the edit's scope"."""

    def __init__(self, hidden_size: int, config: RouterConfig) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        width = config.width
        self.image = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width))
        self.text = nn.Sequential(nn.LayerNorm(2 * hidden_size), nn.Linear(2 * hidden_size, width))
        self.head = nn.Sequential(nn.Linear(4 * width + 1, width), nn.GELU(), nn.Linear(width, 1))

    def _project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = features.float()
        hidden = self.hidden_size
        return self.image(features[:, :hidden]), self.text(features[:, hidden:-1]), features[:, -1]

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """The features themselves: the head compares inputs and edits projection by projection, so there
        is no embedding of one side alone to store."""
        return features

    def logits(self, inputs: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        """Pair logits (inputs, edits) between input features and edit features."""
        q_image, q_text, q_has = self._project(inputs)
        e_image, e_text, e_has = self._project(edits)

        def compare(q: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
            q, e = q.unsqueeze(1), e.unsqueeze(0)  # (inputs, 1, width), (1, edits, width)
            return [q * e, (q - e).abs()]

        both = (q_has.unsqueeze(1) * e_has.unsqueeze(0)).unsqueeze(-1)
        pairs = torch.cat([*compare(q_image, e_image), *compare(q_text, e_text), both], dim=-1)
        return self.head(pairs).squeeze(-1)


class RoutedEditor(Editor):
    """Wraps an editor: edits are made by `inner`; each input is answered by the edited model when the
    classifier puts it in some stored edit's scope, by the original model otherwise."""

    def __init__(self, inner: Editor, classifier: DisentanglementClassifier, config: RouterConfig) -> None:
        self.inner = inner
        self.backbone = inner.backbone
        self.classifier = classifier
        self.config = config
        self.router = EditRouter(self.features, classifier, config.threshold)  # keys: router features
        # One edited model holds every edit: all routed rows take this one path.
        self.edited = WholeBatch(inner.answering)

    def features(self, batch: EditBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return router_features(self.backbone, batch, self.config.feature_layer)

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        start = time.perf_counter()
        self.router.add(inputs)  # before `inner` edits: the key is read from the original model
        report = self.inner.edit(inputs)
        report.seconds = time.perf_counter() - start
        return report

    def restore(self) -> None:
        self.inner.restore()
        self.router.clear()

    def gate_values(self, batch: EditBatch) -> dict[str, torch.Tensor] | None:
        """The inner editor's gate: what its latent knowledge lets in on the edited path."""
        return self.inner.gate_values(batch)

    @contextmanager
    def answering(self) -> Iterator[AnsweringModel]:
        yield RoutedAnswers(self.router, lambda _: self.edited, self.backbone)


# --- training ----------------------------------------------------------------------------------------

IN_SCOPE = (names.EDIT, names.REPHRASE, names.IMAGE_REPHRASE, names.RELATED)
"""Inputs in their own record's edit scope; the locality cases and the hard neighbours are out of it, and
every input is out of every other record's scope."""
KINDS = (*names.CASES, *names.NEIGHBOUR_CASES)


@dataclass
class RoutingLoss:
    loss: torch.Tensor
    routed: dict[str, torch.Tensor]
    """Per kind of input, (inputs,) bools: routed as it should be by its own record's edit."""
    other_edits: torch.Tensor
    """(pairs,) bools: an input kept out of another record's edit scope."""


@torch.no_grad()
def batch_features(backbone: Backbone, batch: EditBatch, layer: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Router features of a collated batch: the edits' (records, features) and, per kind of input, the
    rows and the record each row belongs to."""
    inputs: dict[str, Any] = {}
    for case in names.CASES:
        features = router_features(backbone, batch.cases[case], layer)[1]
        inputs[case] = (features, torch.arange(len(features), device=features.device))
    for case in names.NEIGHBOUR_CASES:
        groups = [
            (router_features(backbone, group, layer)[1], record)
            for record, group in enumerate(batch.neighbours[case])
            if group is not None
        ]
        if groups:
            rows = torch.cat([features for features, _ in groups])
            owners = torch.cat([torch.full((len(f),), record, device=f.device) for f, record in groups])
            inputs[case] = (rows, owners)
    return inputs[names.EDIT][0], inputs


def routing_loss(
    classifier: DisentanglementClassifier,
    edits: torch.Tensor,
    inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    threshold: float,
) -> RoutingLoss:
    """Binary cross-entropy over every (input, edit) pair of a batch of records. Each kind of input
    counts equally with its own record's edit (in scope or hard out of scope), and all pairs with other
    records' edits (easy out of scope) count as one more kind: the few image rephrases and hard
    neighbours weigh as much as the many easy pairs."""
    records = torch.arange(len(edits), device=edits.device)
    terms, routed, other = [], {}, []
    easy_losses = []
    for kind, (features, owners) in inputs.items():
        logits = classifier.logits(features, edits)  # (inputs, edits)
        own = owners.unsqueeze(1) == records.unsqueeze(0)
        labels = (own if kind in IN_SCOPE else torch.zeros_like(own)).float()
        pair_losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        terms.append(pair_losses[own].mean())
        easy_losses.append(pair_losses[~own])
        inside = torch.sigmoid(logits.detach()) > threshold
        routed[kind] = inside[own] if kind in IN_SCOPE else ~inside[own]
        other.append(~inside[~own])
    easy = torch.cat(easy_losses)
    if len(easy):
        terms.append(easy.mean())
    return RoutingLoss(torch.stack(terms).mean(), routed, torch.cat(other))
