"""torchmetrics wrappers that accumulate per-sample editing scores and report their mean ×100.

One metric object per anchor (Rel, T-Gen, M-Gen, T-Loc, M-Loc) and, optionally, per generation-accuracy key;
`build_editing_metrics` returns them in a `MetricCollection` keyed by the names in `names.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from unike_pl.metrics.names import (
    ANSWER_TOP1,
    GENERATION_METRICS,
    HARD_LOCALITY,
    LOCALITY_SCORER_NAMES,
    LOCALITY_TOP_K,
    M_GENERALITY,
    M_LOCALITY,
    RELATED_ACCURACY,
    RELIABILITY,
    T_GENERALITY,
    T_LOCALITY,
    TOKEN_ACCURACY,
)
from unike_pl.metrics.scorers import target_scorer


class SampleMean(Metric):
    """Mean of per-sample scores in [0, 1], reported ×100; summed across processes."""

    name: ClassVar[str] = "sample_mean"
    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False

    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:
        """Add a batch of per-sample scores, (batch,) floats in [0, 1] (computed by `unike_pl.scoring`, or
        read back from a finished edit's result file)."""
        if scores.dim() != 1:
            raise ValueError(f"{self.name}: scores must be (batch,), got shape {tuple(scores.shape)}")
        if not scores.dtype.is_floating_point:
            raise ValueError(f"{self.name}: scores must be floats, got dtype {scores.dtype}")
        scores = scores.detach()
        bad = (~((scores >= 0) & (scores <= 1))).nonzero().flatten().tolist()  # nan fails both tests
        if bad:
            raise ValueError(f"{self.name}: scores outside [0, 1] (or nan) at batch indices {bad}")
        self.total += scores.sum().to(self.total)
        self.count += scores.numel()

    def compute(self) -> Tensor:
        """Return the mean score ×100 as a float32 scalar; RuntimeError when nothing was scored."""
        if int(self.count) == 0:
            raise RuntimeError(f"{self.name}: compute() was called but no samples were scored")
        return (self.total / self.count * 100.0).float()


class TargetScore(SampleMean):
    """Teacher-forced score of the target tokens (Reliability, T-Generality, M-Generality); its scores come
    from `target_scorer(self.scorer)`."""

    name: ClassVar[str] = "target_score"

    def __init__(self, scorer: str = TOKEN_ACCURACY, **kwargs: Any) -> None:
        """
        Args:
            scorer: target scorer, `token_accuracy` (mean over target tokens) or `exact_match` (all right).
        """
        super().__init__(**kwargs)
        target_scorer(scorer)  # ValueError listing the valid names
        self.scorer = scorer


class Reliability(TargetScore):
    """Rel: the edit input itself answers the edit target."""

    name: ClassVar[str] = RELIABILITY


class TGenerality(TargetScore):
    """T-Gen: a rephrased prompt with the same image answers the edit target."""

    name: ClassVar[str] = T_GENERALITY


class MGenerality(TargetScore):
    """M-Gen: the same prompt with a rephrased image answers the edit target."""

    name: ClassVar[str] = M_GENERALITY


class LocalityScore(SampleMean):
    """Agreement of post-edit with cached pre-edit predictions on unrelated inputs; its scores come from
    `locality_scores(self.scorer, …, self.top_k)`."""

    name: ClassVar[str] = "locality_score"

    def __init__(self, scorer: str = ANSWER_TOP1, *, top_k: int, **kwargs: Any) -> None:
        """
        Args:
            scorer: locality scorer, `answer_top1` (UniKE: argmax at answer positions) or `sequence_topk`
                (EasyEdit: ordered top-k over every attended position).
            top_k: ranks compared by `sequence_topk`; unused by `answer_top1`.
        """
        super().__init__(**kwargs)
        if scorer not in LOCALITY_SCORER_NAMES:
            raise ValueError(
                f"unknown locality scorer {scorer!r}; valid scorers: {', '.join(LOCALITY_SCORER_NAMES)}"
            )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.scorer = scorer
        self.top_k = top_k


class TLocality(LocalityScore):
    """T-Loc: text-only unrelated questions keep their pre-edit predictions (top-1 by default)."""

    name: ClassVar[str] = T_LOCALITY

    def __init__(
        self, scorer: str = ANSWER_TOP1, top_k: int = LOCALITY_TOP_K[T_LOCALITY], **kwargs: Any
    ) -> None:
        super().__init__(scorer, top_k=top_k, **kwargs)


class MLocality(LocalityScore):
    """M-Loc: unrelated image-question pairs keep their pre-edit predictions (top-10 by default)."""

    name: ClassVar[str] = M_LOCALITY

    def __init__(
        self, scorer: str = ANSWER_TOP1, top_k: int = LOCALITY_TOP_K[M_LOCALITY], **kwargs: Any
    ) -> None:
        super().__init__(scorer, top_k=top_k, **kwargs)


class RelatedAccuracy(SampleMean):
    """Related-context accuracy (LDKE's Causal Misalignment): questions the edit implies answer the truth.
    A record's score is the mean over its related questions."""

    name: ClassVar[str] = RELATED_ACCURACY


class HardLocality(SampleMean):
    """Hard-locality retention (LDKE's Feature Entanglement): close out-of-scope inputs (same image with
    another question, a similar scene with the same question) keep their pre-edit predictions. A record's
    score is the mean over its hard neighbours."""

    name: ClassVar[str] = HARD_LOCALITY


class GenerationAccuracy(SampleMean):
    """Greedy-decoding accuracy: normalised string match of the generation with the target (the scores of
    `generation_match`)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        """
        Args:
            name: the metric key, one of `reliability_gen`, `t_generality_gen`, `m_generality_gen`.
        """
        super().__init__(**kwargs)
        if name not in GENERATION_METRICS:
            raise ValueError(
                f"unknown generation metric {name!r}; valid names: {', '.join(GENERATION_METRICS)}"
            )
        self.name = name  # type: ignore[misc]


def build_editing_metrics(
    target_scorer: str = TOKEN_ACCURACY,
    locality_scorer: str = ANSWER_TOP1,
    generation: bool = False,
) -> MetricCollection:
    """Return one metric per key of `names.py`, keyed by that key; `compute()` gives {key: score ×100}.
    The two neighbour metrics are only updated on data that has neighbours (the embedded world).

    Args:
        target_scorer: scorer of Rel, T-Gen and M-Gen (`token_accuracy` or `exact_match`).
        locality_scorer: scorer of T-Loc and M-Loc (`answer_top1` or `sequence_topk`).
        generation: also hold the three generation-accuracy metrics.

    Use `.clone(prefix="val/")` for per-stage copies, which log as `val/reliability`.
    """
    metrics: dict[str, Metric] = {
        RELIABILITY: Reliability(target_scorer),
        T_GENERALITY: TGenerality(target_scorer),
        M_GENERALITY: MGenerality(target_scorer),
        T_LOCALITY: TLocality(locality_scorer),
        M_LOCALITY: MLocality(locality_scorer),
        RELATED_ACCURACY: RelatedAccuracy(),
        HARD_LOCALITY: HardLocality(),
    }
    if generation:
        metrics.update({name: GenerationAccuracy(name) for name in GENERATION_METRICS})
    # Every metric has the same states (total, count), so compute groups would wrongly merge them.
    return MetricCollection(metrics, compute_groups=False)
