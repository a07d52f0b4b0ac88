"""Scoring the five evaluation cases of a batch with a (possibly edited) backbone.

Shared by every method: the target cases (edit, rephrase, image rephrase) are scored against their
targets, the locality cases against the unedited model's cached top-k predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import MetricCollection

from unike_pl.backbones.loader import Backbone
from unike_pl.metrics import names
from unike_pl.metrics.scorers import top_k_predictions

PRE_EDIT_TOP_K = 10
"""Pre-edit predictions are cached as ordered top-10 ids, enough for both locality scorers."""


@dataclass
class ScoringConfig:
    """How edits are scored (METHOD.md §3); recorded in every result file."""

    target_scorer: str = names.TOKEN_ACCURACY
    """Scorer of Rel / T-Gen / M-Gen: token_accuracy or exact_match."""
    locality_scorer: str = names.ANSWER_TOP1
    """Scorer of T-Loc / M-Loc: answer_top1 (UniKE) or sequence_topk (EasyEdit)."""
    generation: bool = True
    """Also score greedy generation (normalised string match) for Rel / T-Gen / M-Gen."""
    max_new_tokens: int = 16
    """Greedy decoding length cap for generation accuracy."""

    def settings(self) -> dict[str, Any]:
        return {
            "target_scorer": self.target_scorer,
            "locality_scorer": self.locality_scorer,
            "generation": self.generation,
            "max_new_tokens": self.max_new_tokens,
        }


@torch.no_grad()
def pre_edit_predictions(
    backbone: Backbone,
    cases: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Ordered top-k ids (batch, seq, 10) of the unedited model on the two locality cases."""
    return {case: top_k_predictions(backbone(cases[case]), PRE_EDIT_TOP_K) for case in names.LOCALITY_CASES}


def score_targets(
    backbone: Backbone, batch: Mapping[str, Any], metrics: MetricCollection, scoring: ScoringConfig
) -> None:
    """Update Rel / T-Gen / M-Gen (and their generation accuracies) for the batch."""
    for case in names.TARGET_CASES:
        encoded = batch["cases"][case]
        metrics[names.CASE_METRIC[case]].update(backbone(encoded), encoded["labels"])
        if scoring.generation:
            answers = backbone.generate_answers(encoded, scoring.max_new_tokens)
            metrics[names.CASE_GENERATION_METRIC[case]].update(answers, batch["targets"][case])


def score_locality(
    backbone: Backbone,
    batch: Mapping[str, Any],
    metrics: MetricCollection,
    pre_topk: Mapping[str, torch.Tensor],
) -> None:
    """Update T-Loc / M-Loc: post-edit predictions against the cached pre-edit ones."""
    for case in names.LOCALITY_CASES:
        encoded = batch["cases"][case]
        metrics[names.CASE_METRIC[case]].update(
            backbone(encoded), pre_topk[case], encoded["labels"], encoded["attention_mask"]
        )


def score_locality_answers(backbone: Backbone, batch: Mapping[str, Any], metrics: MetricCollection) -> None:
    """Accuracy of the model on the locality questions' own answers (a base-model property)."""
    for case in names.LOCALITY_CASES:
        encoded = batch["cases"][case]
        metrics[names.CASE_ANSWER_METRIC[case]].update(backbone(encoded), encoded["labels"])
