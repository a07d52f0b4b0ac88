"""Per-sample scores of the five evaluation cases of a batch with a (possibly edited) backbone.

Shared by every method: the target cases (edit, rephrase, image rephrase) are scored against their
targets, the locality cases against the unedited model's cached top-k predictions. Scores are returned
as {metric key: (batch,) tensor in [0, 1]} so that they can be stored per edit and added to metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unike_pl.backbones.loader import Backbone
from unike_pl.data.cases import EditBatch
from unike_pl.editing.base import AnsweringModel
from unike_pl.metrics import names
from unike_pl.metrics.scorers import generation_match, locality_scores, target_scorer, top_k_predictions
from unike_pl.settings import require_positive

PRE_EDIT_TOP_K = 10
"""Pre-edit predictions are cached as ordered top-10 ids, enough for both locality scorers."""

Scores = dict[str, torch.Tensor]


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
    pre_edit_cache: str | None = None
    """Folder that keeps the unedited model's predictions across runs (None: recompute every run)."""
    allow_non_finite: bool = False
    """Finish a run whose edits gave non-finite logits with exit code 0 (they are counted and marked in
    any case); by default such a run fails once its results are written."""

    def __post_init__(self) -> None:
        require_positive("scoring", max_new_tokens=self.max_new_tokens)

    def settings(self) -> dict[str, Any]:
        return {
            "target_scorer": self.target_scorer,
            "locality_scorer": self.locality_scorer,
            "generation": self.generation,
            "max_new_tokens": self.max_new_tokens,
        }


PreEdit = dict[str, Any]
"""Pre-edit top-k ids: per locality case a (batch, seq, k) tensor; for the hard neighbours a list with, per
record, a (neighbours, seq, k) tensor or None."""


@torch.no_grad()
def pre_edit_predictions(backbone: Backbone, batch: EditBatch) -> PreEdit:
    """Ordered top-k ids of the unedited model on the locality cases and the hard neighbours."""
    predictions: PreEdit = {
        case: top_k_predictions(backbone(batch.cases[case]), PRE_EDIT_TOP_K) for case in names.LOCALITY_CASES
    }
    predictions[names.HARD_NEIGHBOURS] = [
        None if group is None else top_k_predictions(backbone(group), PRE_EDIT_TOP_K)
        for group in batch.neighbours[names.HARD_NEIGHBOURS]
    ]
    return predictions


@torch.no_grad()
def target_scores(model: AnsweringModel, batch: EditBatch, scoring: ScoringConfig) -> Scores:
    """Rel / T-Gen / M-Gen (and their generation accuracies) of every sample."""
    scorer = target_scorer(scoring.target_scorer)
    scores: Scores = {}
    for case in names.TARGET_CASES:
        encoded = batch.cases[case]
        scores[names.CASE_METRIC[case]] = scorer(model(encoded), encoded["labels"]).float().cpu()
        if scoring.generation:
            answers = model.generate_answers(encoded, scoring.max_new_tokens)
            scores[names.CASE_GENERATION_METRIC[case]] = generation_match(
                answers, batch.targets[case]
            ).float()
    return scores


@torch.no_grad()
def locality_scores_after_edit(
    model: AnsweringModel,
    batch: EditBatch,
    scoring: ScoringConfig,
    pre_topk: PreEdit,
) -> Scores:
    """T-Loc / M-Loc of every sample: post-edit predictions against the cached pre-edit ones."""
    return {
        names.CASE_METRIC[case]: _locality(model, batch.cases[case], pre_topk[case], case, scoring)
        for case in names.LOCALITY_CASES
    }


def _locality(
    model: AnsweringModel,
    encoded: Mapping[str, Any],
    pre_topk: torch.Tensor,
    case: str,
    scoring: ScoringConfig,
) -> torch.Tensor:
    metric = names.CASE_METRIC[case]
    return (
        locality_scores(
            scoring.locality_scorer,
            model(encoded),
            pre_topk.to(encoded["input_ids"].device, torch.long),
            encoded["labels"],
            encoded["attention_mask"],
            names.LOCALITY_TOP_K[metric],
        )
        .float()
        .cpu()
    )


@torch.no_grad()
def related_scores(model: AnsweringModel, batch: EditBatch, scoring: ScoringConfig) -> Scores:
    """Related-context accuracy: the target scorer against the truth the edit implies, the mean over each
    record's related questions. Only records that have them are scored (one score per such record)."""
    scorer = target_scorer(scoring.target_scorer)
    related = [
        scorer(model(group), group["labels"]).float().mean().cpu()
        for group in batch.neighbours[names.RELATED]
        if group is not None
    ]
    return {names.RELATED_ACCURACY: torch.stack(related)} if related else {}


@torch.no_grad()
def neighbour_scores(
    model: AnsweringModel, batch: EditBatch, scoring: ScoringConfig, pre_topk: PreEdit
) -> Scores:
    """Related-context accuracy and hard-locality retention (the locality scorer against pre-edit
    predictions, the mean over each record's hard neighbours), for the records that have them."""
    groups = batch.neighbours[names.HARD_NEIGHBOURS]
    hard = [
        _locality(model, group, pre, names.HARD_NEIGHBOURS, scoring).mean()
        for group, pre in zip(groups, pre_topk[names.HARD_NEIGHBOURS], strict=True)
        if group is not None
    ]
    scores = related_scores(model, batch, scoring)
    if hard:
        scores[names.HARD_LOCALITY] = torch.stack(hard)
    return scores


@torch.no_grad()
def locality_answer_scores(backbone: Backbone, batch: EditBatch, scoring: ScoringConfig) -> Scores:
    """Accuracy of the model on the locality questions' own answers (a base-model property)."""
    scorer = target_scorer(scoring.target_scorer)
    scores: Scores = {}
    for case in names.LOCALITY_CASES:
        encoded = batch.cases[case]
        scores[names.CASE_ANSWER_METRIC[case]] = scorer(backbone(encoded), encoded["labels"]).float().cpu()
    return scores


NEIGHBOUR_CASE_OF_METRIC = {names.CASE_METRIC[case]: case for case in names.NEIGHBOUR_CASES}


def score_groups(batch: EditBatch, scores: Mapping[str, torch.Tensor]) -> dict[str, list[str | None]]:
    """The record group of every entry of every score: one entry per record of the batch, except for the
    neighbour metrics, which score only the records that have inputs of their case (`neighbour_scores`)."""
    groups: dict[str, list[str | None]] = {}
    for key, values in scores.items():
        case = NEIGHBOUR_CASE_OF_METRIC.get(key)
        if case is None:
            entries = list(batch.group)
        else:
            inputs = batch.neighbours[case]
            entries = [group for group, own in zip(batch.group, inputs, strict=True) if own is not None]
        if len(entries) != len(values):
            raise ValueError(f"score {key!r} has {len(values)} entries for {len(entries)} scored records")
        groups[key] = entries
    return groups
