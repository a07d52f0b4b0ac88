"""Validation means of the fit modules: the same values on one process or several.

Lightning's `self.log(..., sync_dist=True)` averages the processes' batch-size sums with an integer mean
(17 examples over 2 processes count as 16), and a key that one process never logs leaves the others
waiting for it. Here each value is a torchmetrics mean (its sums are added over the processes when it is
computed), and every process logs the same keys at the end of the epoch, whatever share of the split it
saw.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric


class ValidationMeans(nn.Module):
    """Weighted means of named validation values: `update` in the validation steps, `log` once in
    `on_validation_epoch_end`, on every process."""

    def __init__(self, names: Iterable[str], prefix: str = "val/") -> None:
        """
        Args:
            names: the values' names (logged as `{prefix}{name}`).
            prefix: what the logged keys start with.
        """
        super().__init__()
        self.prefix = prefix
        self.means = nn.ModuleDict({name: MeanMetric() for name in names})

    def update(self, name: str, value: Tensor | float, weight: Tensor | float = 1.0) -> None:
        """Add `value` (a scalar, or one value per sample) with `weight` (a batch's size, or 1)."""
        self.means[name].update(torch.as_tensor(value, dtype=torch.float32).detach(), weight)

    def log(self, module: L.LightningModule, prog_bar: Collection[str] = ()) -> None:
        """Log the mean of every value that some process saw (Lightning computes, syncs and resets them);
        reset the others."""
        weights = torch.stack([metric.weight for metric in self.means.values()])
        seen = module.trainer.strategy.reduce(weights, reduce_op="sum")  # the same decision everywhere
        for (name, metric), weight in zip(self.means.items(), seen.tolist(), strict=True):
            if weight > 0:
                module.log(f"{self.prefix}{name}", metric, prog_bar=name in prog_bar)
            else:
                metric.reset()
