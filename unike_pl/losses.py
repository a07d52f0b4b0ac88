"""Training losses over target tokens (labels = -100 elsewhere, logit t predicts label t+1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unike_pl.backbones.encoding import IGNORE_INDEX


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the target tokens and their count: (loss_sum, tokens)."""
    shifted_logits = logits[:, :-1].flatten(0, 1)  # (batch * (seq - 1), vocab)
    shifted_labels = labels[:, 1:].flatten()
    loss = F.cross_entropy(shifted_logits.float(), shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, (shifted_labels != IGNORE_INDEX).sum()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of a batch."""
    loss, tokens = answer_loss_sum(logits, labels)
    if tokens == 0:
        raise ValueError("the batch has no target tokens to train on")
    return loss / tokens
