"""Per-sample editing scores as pure tensor functions (METHOD.md §3).

Conventions follow causal language models in Hugging Face:
- `logits` is (batch, seq, vocab);
- `labels` is (batch, seq), -100 everywhere except the target tokens;
- the logit at position t predicts the token at position t + 1, so `logits[:, :-1]` is compared with
  `labels[:, 1:]`.

Every scorer returns a float tensor of shape (batch,) with values in [0, 1]. A sample with nothing to score
raises a ValueError naming its batch index: an empty target is a data error, never a silent nan.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from unike_pl.metrics.names import (
    ANSWER_TOP1,
    EXACT_MATCH,
    LOCALITY_SCORER_NAMES,
    SEQUENCE_TOPK,
    TOKEN_ACCURACY,
)

IGNORE_INDEX = -100
"""Label value of positions that are not scored (prompt, image queries, padding)."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ---------------------------------------------------------------------------------------------------------
# Checks shared by the scorers
# ---------------------------------------------------------------------------------------------------------


def _check_logits_and_positions(logits: Tensor, other: Tensor, other_name: str) -> None:
    """Raise ValueError unless `logits` is (batch, seq, vocab) and `other` is (batch, seq)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, seq, vocab), got shape {tuple(logits.shape)}")
    if other.dim() != 2 or tuple(other.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"{other_name} must be (batch, seq) matching logits; got {other_name} shape {tuple(other.shape)} "
            f"and logits shape {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"sequences need at least 2 positions to score, got logits shape {tuple(logits.shape)}"
        )


def _check_labels(labels: Tensor) -> None:
    """Raise ValueError for integer-less labels or a target token at position 0, which nothing predicts."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    first = (labels[:, 0] != IGNORE_INDEX).nonzero().flatten().tolist()
    if first:
        raise ValueError(
            f"labels at position 0 cannot be scored (no logit predicts them); batch indices {first} "
            f"have a target token there"
        )


def _answer_mask(labels: Tensor) -> Tensor:
    """Return (batch, seq - 1) bools: position t is an answer position when labels[:, t + 1] is a target."""
    mask = labels[:, 1:] != IGNORE_INDEX  # (batch, seq - 1)
    empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"no target tokens to score at batch indices {empty} (all labels are {IGNORE_INDEX})"
        )
    return mask


def _check_k(k: int, vocab: int) -> None:
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, vocab size {vocab}], got {k}")


# ---------------------------------------------------------------------------------------------------------
# Target scorers: Reliability, T-Generality, M-Generality (teacher-forced)
# ---------------------------------------------------------------------------------------------------------


def _target_hits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Return (hits, mask), both (batch, seq - 1): argmax-correct target positions, and target positions."""
    _check_logits_and_positions(logits, labels, "labels")
    _check_labels(labels)
    mask = _answer_mask(labels)  # (batch, seq - 1)
    predicted = logits[:, :-1].argmax(dim=-1)  # (batch, seq - 1)
    hits = (predicted == labels[:, 1:]) & mask  # (batch, seq - 1)
    return hits, mask


def token_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over each sample's target tokens of (argmax == label). Returns (batch,) floats."""
    hits, mask = _target_hits(logits, labels)
    return hits.sum(dim=1).float() / mask.sum(dim=1).float()


def exact_match(logits: Tensor, labels: Tensor) -> Tensor:
    """1.0 for a sample whose target tokens are all argmax-correct, else 0.0. Returns (batch,) floats."""
    hits, mask = _target_hits(logits, labels)
    return (hits.sum(dim=1) == mask.sum(dim=1)).float()


TARGET_SCORERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    TOKEN_ACCURACY: token_accuracy,
    EXACT_MATCH: exact_match,
}
"""Target scorers by name: `(logits, labels) -> (batch,)` scores."""


def target_scorer(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Return the target scorer called `name`; ValueError listing the valid names otherwise."""
    if name not in TARGET_SCORERS:
        raise ValueError(f"unknown target scorer {name!r}; valid scorers: {', '.join(TARGET_SCORERS)}")
    return TARGET_SCORERS[name]


# ---------------------------------------------------------------------------------------------------------
# Locality scorers: post-edit predictions against cached pre-edit predictions
# ---------------------------------------------------------------------------------------------------------


def top_k_predictions(logits: Tensor, k: int) -> Tensor:
    """Return the ordered top-k token ids of every position, (batch, seq, k) int64, best first.

    This is what gets cached for the pre-edit model instead of full logits: k ids per position rather than
    the whole vocabulary. Post-edit predictions go through this same function with as many ranks, so that
    ties break alike.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, seq, vocab), got shape {tuple(logits.shape)}")
    _check_k(k, logits.shape[-1])
    return torch.topk(logits, k, dim=-1, largest=True, sorted=True).indices  # (batch, seq, k)


def answer_top1_agreement(post_logits: Tensor, pre_ids: Tensor, labels: Tensor) -> Tensor:
    """UniKE's locality: fraction of answer positions where post-edit argmax equals pre-edit argmax.

    Answer positions are the t whose next label `labels[:, t + 1]` is a target token; prompt, image and
    padding positions do not count. `pre_ids` holds the pre-edit argmax ids, (batch, seq), or ordered
    top-r ids, (batch, seq, r), whose first rank is the argmax. The post-edit argmax is taken by the same
    top-r call, so that tied logits (common in bfloat16) break alike on both sides. Returns (batch,) floats.
    """
    if pre_ids.dim() == 2:
        pre_ids = pre_ids.unsqueeze(-1)
    if pre_ids.dim() != 3:
        raise ValueError(f"pre_ids must be (batch, seq) or (batch, seq, r), got shape {tuple(pre_ids.shape)}")
    _check_logits_and_positions(post_logits, pre_ids[..., 0], "pre_ids")
    _check_logits_and_positions(post_logits, labels, "labels")
    _check_labels(labels)
    mask = _answer_mask(labels)  # (batch, seq - 1)
    pre_top1 = pre_ids[..., 0]  # (batch, seq)
    post_top1 = top_k_predictions(post_logits, pre_ids.shape[-1])[..., 0]  # (batch, seq)
    agree = (post_top1[:, :-1] == pre_top1[:, :-1]) & mask  # (batch, seq - 1)
    return agree.sum(dim=1).float() / mask.sum(dim=1).float()


def sequence_topk_agreement(post_logits: Tensor, pre_topk: Tensor, attention_mask: Tensor, k: int) -> Tensor:
    """EasyEdit's locality: ordered top-k agreement over every attended position of the sequence.

    Position p and rank r agree when the post-edit r-th best id at p equals the pre-edit one; the sample's
    score is the fraction of (attended position, rank) pairs that agree. Attended positions are those with
    `attention_mask == 1`, prompt and image placeholders included. `pre_topk` is (batch, seq, >= k); its
    first k ranks are used, and the post-edit ranks come from a top-k call with as many ranks as
    `pre_topk` holds, so that tied logits break alike on both sides. Returns (batch,) floats.
    """
    if pre_topk.dim() != 3:
        raise ValueError(f"pre_topk must be (batch, seq, k), got shape {tuple(pre_topk.shape)}")
    if tuple(pre_topk.shape[:2]) != tuple(post_logits.shape[:2]):
        raise ValueError(
            f"pre_topk must be (batch, seq, k) matching post_logits; got pre_topk shape "
            f"{tuple(pre_topk.shape)} and post_logits shape {tuple(post_logits.shape)}"
        )
    _check_logits_and_positions(post_logits, attention_mask, "attention_mask")
    _check_k(k, post_logits.shape[-1])
    if pre_topk.shape[-1] < k:
        raise ValueError(f"pre_topk holds {pre_topk.shape[-1]} ranks, fewer than k={k}")
    attended = attention_mask == 1  # (batch, seq)
    counts = attended.sum(dim=1)  # (batch,)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"no attended positions to score at batch indices {empty} (attention_mask is all 0)")
    post_topk = top_k_predictions(post_logits, pre_topk.shape[-1])[..., :k]  # (batch, seq, k)
    agree = (post_topk == pre_topk[..., :k]) & attended.unsqueeze(-1)  # (batch, seq, k)
    return agree.sum(dim=(1, 2)).float() / (counts.float() * k)


def locality_scores(
    scorer_name: str,
    post_logits: Tensor,
    pre_topk: Tensor,
    labels: Tensor,
    attention_mask: Tensor,
    k: int,
) -> Tensor:
    """Score locality with the scorer called `scorer_name`. Returns (batch,) floats.

    `answer_top1` uses the first rank of `pre_topk` and `labels` (k is not used); `sequence_topk` uses the
    first k ranks of `pre_topk` and `attention_mask` (labels are not used).
    """
    if scorer_name == ANSWER_TOP1:
        if pre_topk.dim() != 3:
            raise ValueError(f"pre_topk must be (batch, seq, k), got shape {tuple(pre_topk.shape)}")
        return answer_top1_agreement(post_logits, pre_topk, labels)
    if scorer_name == SEQUENCE_TOPK:
        return sequence_topk_agreement(post_logits, pre_topk, attention_mask, k)
    raise ValueError(
        f"unknown locality scorer {scorer_name!r}; valid scorers: {', '.join(LOCALITY_SCORER_NAMES)}"
    )


# ---------------------------------------------------------------------------------------------------------
# Generation accuracy: greedy decoding, normalised string match
# ---------------------------------------------------------------------------------------------------------


def _strip_punctuation(text: str) -> str:
    # Unicode punctuation (category P*) is deleted, not replaced by a space, as in SQuAD's normalisation.
    return "".join(char for char in text if not unicodedata.category(char).startswith("P"))


def normalize_answer(text: str) -> str:
    """Lowercase, delete punctuation, drop English articles (a, an, the), collapse whitespace and strip.

    `normalize_answer("The  Red!") == "red"`.
    """
    text = _strip_punctuation(text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _normalize_pair(generated: str, target: str) -> tuple[str, str]:
    """Normalise both strings; keep articles on both when dropping them would empty the target ("A")."""
    norm_target = normalize_answer(target)
    if norm_target:
        return normalize_answer(generated), norm_target
    return " ".join(_strip_punctuation(generated.lower()).split()), " ".join(
        _strip_punctuation(target.lower()).split()
    )


def generation_match(generated: Sequence[str], targets: Sequence[str]) -> Tensor:
    """1.0 where the normalised generation equals the normalised target, else 0.0. Returns (batch,) floats.

    Callers cut generations at EOS or newline first. A blank target raises ValueError naming its index.
    A target made only of articles (e.g. the option letter "A") is compared with articles kept.
    """
    if isinstance(generated, str) or isinstance(targets, str):
        raise ValueError("generated and targets must be sequences of strings, not single strings")
    if len(generated) != len(targets):
        raise ValueError(f"got {len(generated)} generations for {len(targets)} targets")
    blank = [index for index, target in enumerate(targets) if not target.strip()]
    if blank:
        raise ValueError(f"blank targets at batch indices {blank}")
    matches = []
    for text, target in zip(generated, targets, strict=True):
        norm_text, norm_target = _normalize_pair(text, target)
        matches.append(float(norm_text == norm_target))
    return torch.tensor(matches, dtype=torch.float32)  # (batch,)
