"""The one place where metric keys, evaluation-case names and scorer names live.

Everything that logs, caches or writes a score imports its key from here, so that a key cannot drift
(`image_rephrase_acc` in one file, `rephrase_image_acc` in another).
"""

from __future__ import annotations

from typing import Final

# The evaluation cases are named in `unike_pl.case_names` (the data builds them); re-exported here.
from unike_pl.case_names import (
    CASES as CASES,
    EDIT as EDIT,
    HARD_NEIGHBOURS as HARD_NEIGHBOURS,
    IMAGE_REPHRASE as IMAGE_REPHRASE,
    LOCALITY_CASES as LOCALITY_CASES,
    MULTIMODAL_LOCALITY as MULTIMODAL_LOCALITY,
    NEIGHBOUR_CASES as NEIGHBOUR_CASES,
    RELATED as RELATED,
    REPHRASE as REPHRASE,
    TARGET_CASES as TARGET_CASES,
    TEXT_LOCALITY as TEXT_LOCALITY,
)

# Anchor metrics (METHOD.md §1), reported ×100.
RELIABILITY: Final = "reliability"
T_GENERALITY: Final = "t_generality"
M_GENERALITY: Final = "m_generality"
T_LOCALITY: Final = "t_locality"
M_LOCALITY: Final = "m_locality"

# Generation accuracy (greedy decoding, normalised string match) for the three target-scored cases.
RELIABILITY_GEN: Final = "reliability_gen"
T_GENERALITY_GEN: Final = "t_generality_gen"
M_GENERALITY_GEN: Final = "m_generality_gen"

# Accuracy of the UNEDITED model on the locality questions' own answers (`loc_ans`, `m_loc_a`): a property
# of the base model (how much real knowledge locality protects), not a score of an edit.
T_LOCALITY_ANSWERS: Final = "t_locality_answer_acc"
M_LOCALITY_ANSWERS: Final = "m_locality_answer_acc"

# LDKE's two failure modes (METHOD.md §5), scored on the embedded world's extra fields (absent from MMEdit):
# related questions must follow the edit (Causal Misalignment: their truth is the edit's consequence), and
# hard out-of-scope neighbours must keep their pre-edit predictions (Feature Entanglement).
RELATED_ACCURACY: Final = "related_accuracy"
HARD_LOCALITY: Final = "hard_locality"

# What an edit costs, averaged over edits (not ×100): wall-clock seconds and optimisation steps.
EDIT_SECONDS: Final = "edit_seconds"
EDIT_STEPS: Final = "edit_steps"

# Edits whose model gave non-finite logits on the edit input afterwards (a diverged edit), counted.
NON_FINITE_EDITS: Final = "non_finite_edits"

# Logged per labelled group of records (`val/<group>/records`) beside the group's scores: its record count.
RECORDS: Final = "records"

TARGET_METRICS: Final = (RELIABILITY, T_GENERALITY, M_GENERALITY)
LOCALITY_METRICS: Final = (T_LOCALITY, M_LOCALITY)
GENERATION_METRICS: Final = (RELIABILITY_GEN, T_GENERALITY_GEN, M_GENERALITY_GEN)
ANSWER_METRICS: Final = (T_LOCALITY_ANSWERS, M_LOCALITY_ANSWERS)
NEIGHBOUR_METRICS: Final = (RELATED_ACCURACY, HARD_LOCALITY)
EDIT_METRICS: Final = TARGET_METRICS + LOCALITY_METRICS + GENERATION_METRICS + NEIGHBOUR_METRICS
COST_METRICS: Final = (EDIT_SECONDS, EDIT_STEPS)
# Sequential editing also scores each edit right after it is applied (before the later edits).
IMMEDIATE_METRICS: Final = tuple(f"immediate_{metric}" for metric in TARGET_METRICS)
ALL_METRICS: Final = EDIT_METRICS + ANSWER_METRICS + COST_METRICS + (NON_FINITE_EDITS,) + IMMEDIATE_METRICS

DISPLAY_NAMES: Final[dict[str, str]] = {
    RELIABILITY: "Rel",
    T_GENERALITY: "T-Gen",
    M_GENERALITY: "M-Gen",
    T_LOCALITY: "T-Loc",
    M_LOCALITY: "M-Loc",
    RELIABILITY_GEN: "Rel (gen)",
    T_GENERALITY_GEN: "T-Gen (gen)",
    M_GENERALITY_GEN: "M-Gen (gen)",
    RELATED_ACCURACY: "Related",
    HARD_LOCALITY: "Hard-Loc",
    T_LOCALITY_ANSWERS: "T-Loc answers",
    M_LOCALITY_ANSWERS: "M-Loc answers",
    EDIT_SECONDS: "seconds / edit",
    EDIT_STEPS: "steps / edit",
    NON_FINITE_EDITS: "non-finite edits",
    **{
        f"immediate_{metric}": f"{name} (right after)"
        for metric, name in ((RELIABILITY, "Rel"), (T_GENERALITY, "T-Gen"), (M_GENERALITY, "M-Gen"))
    },
}

CASE_METRIC: Final[dict[str, str]] = {
    EDIT: RELIABILITY,
    REPHRASE: T_GENERALITY,
    IMAGE_REPHRASE: M_GENERALITY,
    TEXT_LOCALITY: T_LOCALITY,
    MULTIMODAL_LOCALITY: M_LOCALITY,
    RELATED: RELATED_ACCURACY,
    HARD_NEIGHBOURS: HARD_LOCALITY,
}
LOCALITY_TOP_K: Final[dict[str, int]] = {T_LOCALITY: 1, M_LOCALITY: 10, HARD_LOCALITY: 10}
"""Ranks compared by the `sequence_topk` scorer: top-1 for text, ordered top-10 for multimodal (EasyEdit)."""
CASE_GENERATION_METRIC: Final[dict[str, str]] = {
    EDIT: RELIABILITY_GEN,
    REPHRASE: T_GENERALITY_GEN,
    IMAGE_REPHRASE: M_GENERALITY_GEN,
}
CASE_ANSWER_METRIC: Final[dict[str, str]] = {
    TEXT_LOCALITY: T_LOCALITY_ANSWERS,
    MULTIMODAL_LOCALITY: M_LOCALITY_ANSWERS,
}

# Scorers: how a target-scored case and a locality case turn logits into per-sample scores (METHOD.md §3).
TOKEN_ACCURACY: Final = "token_accuracy"
EXACT_MATCH: Final = "exact_match"
TARGET_SCORER_NAMES: Final = (TOKEN_ACCURACY, EXACT_MATCH)

ANSWER_TOP1: Final = "answer_top1"
SEQUENCE_TOPK: Final = "sequence_topk"
LOCALITY_SCORER_NAMES: Final = (ANSWER_TOP1, SEQUENCE_TOPK)


def stage_key(stage: str, metric: str) -> str:
    """Return the logged name of `metric` in `stage`: `stage_key("val", RELIABILITY) == "val/reliability"`."""
    if metric not in ALL_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(ALL_METRICS)}")
    if not stage or "/" in stage:
        raise ValueError(f"stage must be a non-empty name without '/', got {stage!r}")
    return f"{stage}/{metric}"
