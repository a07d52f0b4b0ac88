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


def answer_loss_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each sample's target tokens, (batch,)."""
    shifted = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), shifted, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (batch, seq - 1)
    tokens = (shifted != IGNORE_INDEX).sum(1)
    if bool((tokens == 0).any()):
        raise ValueError("a sample has no target tokens to train on")
    return losses.sum(1) / tokens


def kl_to_reference(reference: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """KL(reference ‖ model) of the next-token distributions, averaged over the `positions` (a bool mask
    over the logits' (batch, seq)): how far an edited or trained model drifts from a reference one."""
    reference = F.log_softmax(reference[positions].float(), dim=-1)
    ours = F.log_softmax(logits[positions].float(), dim=-1)
    return (reference.exp() * (reference - ours)).sum(-1).mean()


def violation_mean(violations: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries (the constraints a hinge finds broken), 0 when none is: T-Patcher's
    "margin" reduction, which keeps pushing on the few inputs still breaking a margin instead of letting
    them vanish in the average over all the inputs that already keep it."""
    broken = violations > 0
    return violations.clamp_min(0).sum() / broken.sum().clamp_min(1)


def neuron_margin_losses(
    on_edit: torch.Tensor,
    on_memory: torch.Tensor,
    activation_margin: float,
    memory_margin: float,
    memory_gap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T-Patcher's activation and memory losses of one layer's new neurons, from their pre-activations on
    the edit (positions, n) and on unrelated inputs (memory, n): the activation loss asks every neuron to
    reach `activation_margin` on the edit; the memory loss asks it to stay below −`memory_margin` on every
    unrelated input and `memory_gap` below its activation on every edit position. (activation, memory)."""
    activation = violation_mean(activation_margin - on_edit)
    below = violation_mean(on_memory + memory_margin)
    gap = violation_mean(on_memory[:, None, :] - on_edit[None, :, :] + memory_gap)  # (memory, positions, n)
    return activation, below + gap
