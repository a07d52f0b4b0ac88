"""Scores the unedited model on an MMEdit split: the reference every edit is compared with."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchmetrics import MetricCollection

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import EditBatch
from unike_pl.metrics import names
from unike_pl.metrics.editing import GenerationAccuracy, RelatedAccuracy, TargetScore
from unike_pl.metrics.groups import GroupedMetrics
from unike_pl.modules.backbone_module import BackboneModule, log_metrics, set_record_groups
from unike_pl.scoring import (
    ScoringConfig,
    locality_answer_scores,
    related_scores,
    score_groups,
    target_scores,
)

STAGES = ("val", "test")


def pre_edit_metrics(scoring: ScoringConfig) -> MetricCollection:
    """Target scores of the edit cases, the accuracy on the locality questions' own answers and, on data
    with neighbours, on the related questions (what the edit should change)."""
    keys = names.TARGET_METRICS + names.ANSWER_METRICS
    metrics: dict[str, Any] = {key: TargetScore(scoring.target_scorer) for key in keys}
    metrics[names.RELATED_ACCURACY] = RelatedAccuracy()
    if scoring.generation:
        metrics.update({key: GenerationAccuracy(key) for key in names.GENERATION_METRICS})
    return MetricCollection(metrics, compute_groups=False)


class PreEditEvaluation(BackboneModule):
    """`validate`/`test`: how the model answers before any edit.

    Rel / T-Gen / M-Gen here are the unedited model's scores on the edit targets (low on MMEdit, whose
    targets are the answers the model got wrong); `*_answer_acc` is its accuracy on the locality
    questions, i.e. how much real knowledge the locality metrics protect; `related_accuracy` (data with
    neighbours) its accuracy on the questions an edit implies. Locality itself needs an edit and is not
    reported here.
    """

    def __init__(self, backbone: BackboneConfig, scoring: ScoringConfig | None = None) -> None:
        """
        Args:
            backbone: the model to evaluate.
            scoring: scorer settings (METHOD.md §3).
        """
        super().__init__(backbone)
        self.save_hyperparameters()
        self.scoring = scoring or ScoringConfig()
        self.metrics = nn.ModuleDict(
            {stage: GroupedMetrics(pre_edit_metrics(self.scoring), f"{stage}/") for stage in STAGES}
        )

    def setup(self, stage: str) -> None:
        set_record_groups(self, self.metrics.values())

    def _score(self, batch: EditBatch, stage: str) -> None:
        scores = {
            **target_scores(self.mllm, batch, self.scoring),
            **locality_answer_scores(self.mllm, batch, self.scoring),
            **related_scores(self.mllm, batch, self.scoring),
        }
        self.metrics[stage].add(scores, batch.group, score_groups(batch, scores))
        log_metrics(self, self.metrics[stage], len(batch))

    def validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        self._score(batch, "val")

    def test_step(self, batch: EditBatch, batch_idx: int) -> None:
        self._score(batch, "test")

    def predict_step(self, batch: EditBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Greedy answers of the unedited model for every case of every record."""
        answers = {
            case: self.mllm.generate_answers(batch.cases[case], self.scoring.max_new_tokens)
            for case in names.CASES
        }
        return [
            {
                "record": int(record),
                **{
                    case: {"answer": answers[case][i], "target": batch.targets[case][i]}
                    for case in names.CASES
                },
            }
            for i, record in enumerate(batch.record)
        ]

    def result_settings(self) -> dict[str, Any]:
        return {**super().result_settings(), **self.scoring.settings()}
