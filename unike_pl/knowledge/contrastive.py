"""The two contrastive losses that shape the truthfulness and semantic spaces (InfoNCE, cosine / τ)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_softmax_without_self(similarity: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    return similarity.masked_fill(eye, float("-inf")).log_softmax(dim=-1)


def truthfulness_loss(positives: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised InfoNCE: each positive is pulled to the other positives and pushed from the negatives,
    each negative pulled to the other negatives. (batch, dim) each; needs batch >= 2."""
    if len(positives) < 2:
        raise ValueError("the truthfulness loss needs at least two triplets per batch")
    z = F.normalize(torch.cat([positives, negatives]), dim=-1)  # (2B, dim)
    truthful = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).bool().to(z.device)
    log_prob = _log_softmax_without_self(z @ z.T / temperature)
    same = (truthful[:, None] == truthful[None, :]) & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    return -(log_prob.masked_fill(~same, 0.0).sum(-1) / same.sum(-1)).mean()


def semantic_loss(
    questions: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Each question is pulled to its own triplet's positive and negative answers and pushed from the
    answers of the other triplets. (batch, dim) each."""
    q = F.normalize(questions, dim=-1)
    answers = F.normalize(torch.cat([positives, negatives]), dim=-1)  # (2B, dim)
    log_prob = (q @ answers.T / temperature).log_softmax(dim=-1)  # (B, 2B)
    own = torch.arange(len(q), device=q.device)
    return -(log_prob[own, own] + log_prob[own, own + len(q)]).mean() / 2
