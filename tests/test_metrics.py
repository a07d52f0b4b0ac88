"""Tests of unike_pl.metrics on small hand-built logits whose argmax (and ranking) per position is known."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from unike_pl.metrics import (
    ALL_METRICS,
    ANSWER_METRICS,
    ANSWER_TOP1,
    CASE_METRIC,
    CASES,
    COST_METRICS,
    DISPLAY_NAMES,
    EDIT_METRICS,
    EXACT_MATCH,
    GENERATION_METRICS,
    HARD_LOCALITY,
    IMMEDIATE_METRICS,
    LOCALITY_METRICS,
    M_GENERALITY_GEN,
    M_LOCALITY,
    NEIGHBOUR_CASES,
    NEIGHBOUR_METRICS,
    NON_FINITE_EDITS,
    RELIABILITY,
    RELIABILITY_GEN,
    SEQUENCE_TOPK,
    T_LOCALITY,
    TARGET_METRICS,
    TARGET_SCORERS,
    TOKEN_ACCURACY,
    GenerationAccuracy,
    LocalityScore,
    MLocality,
    Reliability,
    SampleMean,
    TargetScore,
    TLocality,
    answer_top1_agreement,
    build_editing_metrics,
    exact_match,
    generation_match,
    locality_scores,
    normalize_answer,
    read_results,
    sequence_topk_agreement,
    stage_key,
    target_scorer,
    token_accuracy,
    top_k_predictions,
    write_results,
)

VOCAB = 5
IGNORE = -100


def argmax_logits(argmax_ids: list[list[int]], vocab: int = VOCAB) -> Tensor:
    """Logits whose argmax at [b, t] is argmax_ids[b][t]: one-hot rows. Returns (batch, seq, vocab)."""
    return torch.nn.functional.one_hot(torch.tensor(argmax_ids), vocab).float()


def ranked_logits(rankings: list[list[list[int]]]) -> Tensor:
    """Logits with a strict ranking per position: rankings[b][t] lists token ids best first.

    Returns (batch, seq, vocab) with logits[b, t, rankings[b][t][r]] = vocab - r.
    """
    vocab = len(rankings[0][0])
    logits = torch.zeros(len(rankings), len(rankings[0]), vocab)
    for b, sample in enumerate(rankings):
        for t, order in enumerate(sample):
            for rank, token in enumerate(order):
                logits[b, t, token] = float(vocab - rank)
    return logits


# Two samples, seq 5. Sample 0: prompt at positions 0-1, target tokens [4, 2, 1] at positions 2-4, so the
# logits at positions 1, 2, 3 predict them. Sample 1: target tokens [3, 0] at positions 3-4 (positions 2, 3).
LABELS = torch.tensor([[IGNORE, IGNORE, 4, 2, 1], [IGNORE, IGNORE, IGNORE, 3, 0]])
# Sample 0 argmax: pos 1 -> 4 (right), pos 2 -> 2 (right), pos 3 -> 3 (wrong, wants 1): 2/3.
# Sample 1 argmax: pos 2 -> 3 (right), pos 3 -> 0 (right): 1.
ARGMAX = [[0, 4, 2, 3, 0], [1, 1, 3, 0, 4]]


# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------


def test_names_are_consistent() -> None:
    scores = TARGET_METRICS + LOCALITY_METRICS + GENERATION_METRICS + NEIGHBOUR_METRICS + ANSWER_METRICS
    assert scores + COST_METRICS + (NON_FINITE_EDITS,) + IMMEDIATE_METRICS == ALL_METRICS
    assert len(ALL_METRICS) == 18 and len(set(ALL_METRICS)) == 18
    assert set(DISPLAY_NAMES) == set(ALL_METRICS)
    assert DISPLAY_NAMES[RELIABILITY] == "Rel"
    assert set(CASE_METRIC) == set(CASES + NEIGHBOUR_CASES)
    assert tuple(CASE_METRIC[case] for case in CASES) == TARGET_METRICS + LOCALITY_METRICS
    assert stage_key("val", RELIABILITY) == "val/reliability"
    with pytest.raises(ValueError, match="unknown metric"):
        stage_key("val", "rel")


# ---------------------------------------------------------------------------------------------------------
# Target scorers
# ---------------------------------------------------------------------------------------------------------


def test_token_accuracy_hand_computed() -> None:
    scores = token_accuracy(argmax_logits(ARGMAX), LABELS)
    # Sample 0: 2 of 3 target tokens right; sample 1: 2 of 2.
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([2 / 3, 1.0])


def test_target_scorers_compare_shifted_positions() -> None:
    # Argmax equal to the label at the SAME position (no shift) gets every target token wrong:
    # pos 1 -> 0 (wants 4), pos 2 -> 4 (wants 2), pos 3 -> 2 (wants 1).
    unshifted = argmax_logits([[0, 0, 4, 2, 1]])
    assert token_accuracy(unshifted, LABELS[:1]).tolist() == [0.0]


def test_exact_match_zero_then_one() -> None:
    assert exact_match(argmax_logits(ARGMAX), LABELS).tolist() == [0.0, 1.0]
    fixed = [row[:] for row in ARGMAX]
    fixed[0][3] = 1  # position 3 now predicts the last target token 1
    assert exact_match(argmax_logits(fixed), LABELS).tolist() == [1.0, 1.0]
    assert token_accuracy(argmax_logits(fixed), LABELS).tolist() == [1.0, 1.0]


def test_target_scorer_registry() -> None:
    assert dict(TARGET_SCORERS) == {TOKEN_ACCURACY: token_accuracy, EXACT_MATCH: exact_match}


def test_empty_target_raises_with_index() -> None:
    labels = LABELS.clone()
    labels[1] = IGNORE
    for scorer in (token_accuracy, exact_match):
        with pytest.raises(ValueError, match=r"batch indices \[1\]"):
            scorer(argmax_logits(ARGMAX), labels)
    with pytest.raises(ValueError, match=r"batch indices \[1\]"):
        answer_top1_agreement(argmax_logits(ARGMAX), torch.tensor(ARGMAX), labels)


def test_target_at_position_zero_raises() -> None:
    labels = LABELS.clone()
    labels[0, 0] = 3  # no logit predicts position 0
    with pytest.raises(ValueError, match="position 0"):
        token_accuracy(argmax_logits(ARGMAX), labels)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5, 5\)"):
        token_accuracy(argmax_logits(ARGMAX), LABELS[:, :4])
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5, 5\)"):
        answer_top1_agreement(argmax_logits(ARGMAX), torch.tensor(ARGMAX)[:, :4], LABELS)


# ---------------------------------------------------------------------------------------------------------
# Locality scorers
# ---------------------------------------------------------------------------------------------------------


def test_top_k_predictions_are_ordered() -> None:
    logits = ranked_logits([[[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]]])
    top = top_k_predictions(logits, 3)
    assert top.dtype == torch.long
    assert top.tolist() == [[[3, 1, 4], [0, 1, 2]]]
    with pytest.raises(ValueError, match="k must be"):
        top_k_predictions(logits, 6)


def test_answer_top1_counts_only_answer_positions() -> None:
    labels = LABELS[:1]  # answer positions are 1, 2, 3 (they predict labels at 2, 3, 4)
    pre_top1 = torch.tensor([[0, 4, 2, 1, 0]])
    post = [[0, 4, 3, 1, 0]]  # disagrees at answer position 2 only: 2/3
    assert answer_top1_agreement(argmax_logits(post), pre_top1, labels).tolist() == pytest.approx([2 / 3])

    prompt_changed = [[3, 4, 3, 1, 0]]  # position 0 is a prompt position: score does not move
    assert answer_top1_agreement(argmax_logits(prompt_changed), pre_top1, labels).tolist() == pytest.approx(
        [2 / 3]
    )
    last_changed = [[0, 4, 3, 1, 2]]  # position 4 predicts past the sequence: not an answer position
    assert answer_top1_agreement(argmax_logits(last_changed), pre_top1, labels).tolist() == pytest.approx(
        [2 / 3]
    )
    answer_changed = [[0, 4, 3, 2, 0]]  # answer position 3 now disagrees too: 1/3
    assert answer_top1_agreement(argmax_logits(answer_changed), pre_top1, labels).tolist() == pytest.approx(
        [1 / 3]
    )
    # (batch, seq, 1) pre-edit ids are accepted and give the same score.
    assert answer_top1_agreement(
        argmax_logits(post), pre_top1.unsqueeze(-1), labels
    ).tolist() == pytest.approx([2 / 3])


# Pre-edit ranking per position, best first, and a post-edit one that swaps ranks 1 and 2 at position 0,
# keeps position 1, and changes everything at position 2.
PRE_RANKING = [[[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 1, 3, 4]]]
POST_RANKING = [[[1, 0, 2, 3, 4], [4, 3, 2, 1, 0], [3, 4, 0, 1, 2]]]


def test_sequence_topk_is_ordered() -> None:
    pre_topk = top_k_predictions(ranked_logits(PRE_RANKING), 5)  # (1, 3, 5)
    post = ranked_logits(POST_RANKING)
    mask = torch.tensor([[1, 1, 0]])  # position 2 is padding
    # k=2: position 0 has the same set {0, 1} but in swapped order, so both ranks disagree; position 1 agrees
    # on both: 2 / 4.
    assert sequence_topk_agreement(post, pre_topk, mask, 2).tolist() == pytest.approx([0.5])
    # k=1: position 0 disagrees, position 1 agrees: 1 / 2.
    assert sequence_topk_agreement(post, pre_topk, mask, 1).tolist() == pytest.approx([0.5])
    # k=3: position 0 agrees only at rank 3 (id 2), position 1 on all three: 4 / 6.
    assert sequence_topk_agreement(post, pre_topk, mask, 3).tolist() == pytest.approx([2 / 3])


def test_sequence_topk_attention_mask_excludes_padding() -> None:
    pre_topk = top_k_predictions(ranked_logits(PRE_RANKING), 2)
    post = ranked_logits(POST_RANKING)
    # Position 2 differs completely; padded out it does not count (2 / 4), attended it does (2 / 6).
    assert sequence_topk_agreement(post, pre_topk, torch.tensor([[1, 1, 0]]), 2).tolist() == pytest.approx(
        [0.5]
    )
    assert sequence_topk_agreement(post, pre_topk, torch.tensor([[1, 1, 1]]), 2).tolist() == pytest.approx(
        [1 / 3]
    )
    with pytest.raises(ValueError, match=r"batch indices \[0\]"):
        sequence_topk_agreement(post, pre_topk, torch.tensor([[0, 0, 0]]), 2)
    with pytest.raises(ValueError, match="fewer than k=3"):
        sequence_topk_agreement(post, pre_topk, torch.tensor([[1, 1, 1]]), 3)


def test_locality_scores_dispatch() -> None:
    pre_topk = top_k_predictions(ranked_logits(PRE_RANKING), 5)
    post = ranked_logits(POST_RANKING)
    labels = torch.tensor([[IGNORE, 9, IGNORE]])  # only position 0 is an answer position
    mask = torch.tensor([[1, 1, 0]])
    # answer_top1 uses rank 0 at position 0 only: pre 0, post 1 -> 0.
    assert locality_scores(ANSWER_TOP1, post, pre_topk, labels, mask, 10).tolist() == [0.0]
    assert locality_scores(SEQUENCE_TOPK, post, pre_topk, labels, mask, 2).tolist() == pytest.approx([0.5])
    with pytest.raises(ValueError, match="answer_top1, sequence_topk"):
        locality_scores("bleu", post, pre_topk, labels, mask, 1)


# ---------------------------------------------------------------------------------------------------------
# Generation accuracy
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Red!", "red"),
        ("  An apple, a DAY. ", "apple day"),
        ("theory of a thing", "theory of thing"),
        ("New-York", "newyork"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_generation_match() -> None:
    scores = generation_match(["The Red!", "blue", "a.", "two  dogs"], ["red", "green", "A", "Two dogs."])
    # "A" normalises to nothing, so it is compared with articles kept: "a" == "a".
    assert scores.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert generation_match(["b"], ["A"]).tolist() == [0.0]
    with pytest.raises(ValueError, match=r"batch indices \[1\]"):
        generation_match(["red", "blue"], ["red", "  "])
    with pytest.raises(ValueError, match="2 generations for 1 targets"):
        generation_match(["red", "blue"], ["red"])


# ---------------------------------------------------------------------------------------------------------
# torchmetrics wrappers
# ---------------------------------------------------------------------------------------------------------


def test_accumulation_over_two_updates() -> None:
    metric = Reliability()
    score = target_scorer(metric.scorer)
    metric.update(score(argmax_logits(ARGMAX), LABELS))  # scores 2/3 and 1
    wrong = [[0, 0, 0, 0, 0]]
    metric.update(score(argmax_logits(wrong), LABELS[:1]))  # score 0
    expected = (2 / 3 + 1.0 + 0.0) / 3 * 100
    assert metric.compute().item() == pytest.approx(expected, abs=1e-4)
    assert metric.name == RELIABILITY


def test_exact_match_scorer_is_used() -> None:
    metric = Reliability(EXACT_MATCH)
    metric.update(target_scorer(metric.scorer)(argmax_logits(ARGMAX), LABELS))  # exact match: 0 and 1
    assert metric.compute().item() == pytest.approx(50.0)


def test_merged_states_equal_mean_of_all_samples() -> None:
    # What happens across processes: states are summed, so the result is the mean over all samples.
    first, second = SampleMean(), SampleMean()
    first.update(torch.tensor([1.0, 0.5]))
    second.update(torch.tensor([0.0]))
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(50.0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_without_samples_raises() -> None:
    with pytest.raises(RuntimeError, match="no samples were scored"):
        Reliability().compute()


def test_sample_mean_rejects_bad_scores() -> None:
    metric = SampleMean()
    with pytest.raises(ValueError, match=r"batch indices \[1\]"):
        metric.update(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"batch indices \[0\]"):
        metric.update(torch.tensor([math.nan]))


def test_unknown_scorer_raises() -> None:
    with pytest.raises(ValueError, match="token_accuracy, exact_match"):
        TargetScore("bleu")
    with pytest.raises(ValueError, match="answer_top1, sequence_topk"):
        LocalityScore("bleu", top_k=1)
    with pytest.raises(ValueError, match="token_accuracy, exact_match"):
        build_editing_metrics(target_scorer="bleu")


def test_locality_metrics() -> None:
    assert TLocality().top_k == 1 and MLocality().top_k == 10
    assert (TLocality.name, MLocality.name) == (T_LOCALITY, M_LOCALITY)
    metric = TLocality(SEQUENCE_TOPK, top_k=2)
    pre_topk = top_k_predictions(ranked_logits(PRE_RANKING), 2)
    labels = torch.tensor([[IGNORE, 9, IGNORE]])
    mask = torch.tensor([[1, 1, 0]])
    metric.update(locality_scores(metric.scorer, ranked_logits(POST_RANKING), pre_topk, labels, mask, 2))
    assert metric.compute().item() == pytest.approx(50.0)


def test_generation_accuracy_metric() -> None:
    metric = GenerationAccuracy(RELIABILITY_GEN)
    metric.update(generation_match(["The Red!", "blue"], ["red", "green"]))
    assert metric.name == RELIABILITY_GEN
    assert metric.compute().item() == pytest.approx(50.0)
    with pytest.raises(ValueError, match="reliability_gen"):
        GenerationAccuracy(RELIABILITY)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_build_editing_metrics() -> None:
    # MetricCollection sorts its keys alphabetically, so compare sets.
    assert set(build_editing_metrics().keys()) == set(TARGET_METRICS + LOCALITY_METRICS + NEIGHBOUR_METRICS)
    collection = build_editing_metrics(EXACT_MATCH, SEQUENCE_TOPK, generation=True)
    assert set(collection.keys()) == set(EDIT_METRICS)
    assert collection[RELIABILITY].scorer == EXACT_MATCH
    assert collection[M_LOCALITY].scorer == SEQUENCE_TOPK and collection[M_LOCALITY].top_k == 10

    pre_topk = top_k_predictions(ranked_logits(PRE_RANKING), 1)
    post, mask = ranked_logits(POST_RANKING), torch.tensor([[1, 1, 0]])
    labels = torch.tensor([[IGNORE, 9, IGNORE]])
    for key in TARGET_METRICS:
        collection[key].update(exact_match(argmax_logits(ARGMAX), LABELS))  # exact match 0, 1 -> 50
    collection[T_LOCALITY].update(locality_scores(SEQUENCE_TOPK, post, pre_topk, labels, mask, 1))  # 50
    for key in GENERATION_METRICS:
        collection[key].update(generation_match(["red"], ["red"]))  # -> 100
    for key in NEIGHBOUR_METRICS:
        collection[key].update(torch.tensor([0.5, 1.0]))  # per-record means
    with pytest.raises(RuntimeError, match="m_locality"):
        collection.compute()  # M-Loc has no samples yet
    # M-Loc compares ordered top-10, so it needs a vocabulary of at least 10: identical logits -> 100.
    wide = ranked_logits([[list(range(12)), list(range(11, -1, -1))]])  # (1, 2, 12)
    agreement = locality_scores(
        SEQUENCE_TOPK, wide, top_k_predictions(wide, 10), torch.tensor([[IGNORE, 3]]), mask[:, :2], 10
    )
    collection[M_LOCALITY].update(agreement)
    values = {key: value.item() for key, value in collection.compute().items()}
    assert set(values) == set(EDIT_METRICS)
    assert values[RELIABILITY] == pytest.approx(50.0)
    assert values[T_LOCALITY] == pytest.approx(50.0)
    assert values[M_LOCALITY] == pytest.approx(100.0)
    assert values[M_GENERALITY_GEN] == pytest.approx(100.0)
    assert values[HARD_LOCALITY] == pytest.approx(75.0)

    staged = build_editing_metrics().clone(prefix="val/")
    assert set(staged.keys()) == {
        stage_key("val", key) for key in TARGET_METRICS + LOCALITY_METRICS + NEIGHBOUR_METRICS
    }


# ---------------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------------

SETTINGS = {
    "target_scorer": TOKEN_ACCURACY,
    "locality_scorer": ANSWER_TOP1,
    "prompt_template": "Question: {} Short answer:",
    "top_k": 10,
    "wrap_prompt": True,
}


def test_write_results_round_trip(tmp_path: Path) -> None:
    scores = {RELIABILITY: 98.8, "test/t_locality": 2 / 3 * 100, M_GENERALITY_GEN: torch.tensor(38.5)}
    json_path, csv_path = write_results(tmp_path / "out", "blip2_evqa", scores, SETTINGS)
    assert (json_path.name, csv_path.name) == ("blip2_evqa.json", "blip2_evqa.csv")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blip2_evqa.csv", "blip2_evqa.json"]

    data = read_results(json_path)
    assert data["settings"] == SETTINGS
    assert data["scores"][RELIABILITY] == 98.8
    assert data["scores"]["test/t_locality"] == 2 / 3 * 100  # full precision, not rounded
    assert data["scores"][M_GENERALITY_GEN] == pytest.approx(38.5)

    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["metric", "value"]
    assert rows[1] == [RELIABILITY, "98.8"]
    assert float(rows[2][1]) == 2 / 3 * 100
    assert ["setting:prompt_template", "Question: {} Short answer:"] in rows
    assert ["setting:wrap_prompt", "true"] in rows


def test_write_results_requires_settings(tmp_path: Path) -> None:
    settings = {key: value for key, value in SETTINGS.items() if key != "prompt_template"}
    with pytest.raises(ValueError, match="prompt_template"):
        write_results(tmp_path, "run", {RELIABILITY: 90.0}, settings)
    assert list(tmp_path.iterdir()) == []


def test_write_results_rejects_bad_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_rephrase_acc"):
        write_results(tmp_path, "run", {"image_rephrase_acc": 90.0}, SETTINGS)
    with pytest.raises(ValueError, match="not finite"):
        write_results(tmp_path, "run", {RELIABILITY: math.nan}, SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_leave_ordinary_permissions(tmp_path):
    import os

    from unike_pl.io import atomic_directory, atomic_write_text

    atomic_write_text(tmp_path / "scores.json", "{}")
    with atomic_directory(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "scores.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_an_unchanged_input_keeps_its_locality_where_logits_tie(dtype) -> None:
    """Both sides of a locality comparison come from one top-k call with the same number of ranks: torch
    breaks ties differently for k = 10 (the cached pre-edit ids) and k = 1, so identical logits with ties
    (common in half precision) used to score below 100."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(8, 12, 50, generator=generator) * 4).round().to(dtype)  # many ties per position
    assert not torch.equal(top_k_predictions(logits, 1)[..., 0], top_k_predictions(logits, 10)[..., 0])
    pre_topk = top_k_predictions(logits, 10)  # as cached before the edit
    labels = torch.full((8, 12), IGNORE)
    labels[:, 6:] = 3
    mask = torch.ones(8, 12, dtype=torch.long)
    for scorer, k in [(ANSWER_TOP1, 1), (SEQUENCE_TOPK, 1), (SEQUENCE_TOPK, 10)]:
        assert locality_scores(scorer, logits, pre_topk, labels, mask, k).tolist() == [1.0] * 8
