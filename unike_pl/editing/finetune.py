"""FT: the plain baseline. Fine-tune the weights of the last language-model layer(s) on the edit alone."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unike_pl.backbones.encoding import append_eos
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.base import Editor, EditReport
from unike_pl.editing.tail import TailRunner
from unike_pl.losses import answer_loss
from unike_pl.metrics.scorers import exact_match
from unike_pl.settings import require_positive


@dataclass
class FineTuneConfig:
    """Fine-tuning of whole decoder layers (attention and FFN) per edit."""

    layers: int = 1
    """The last `layers` decoder layers of the language model are trained."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    max_steps: int = 40
    """Optimisation steps per edit."""
    stop_early: bool = False
    """Stop once every target token of the edit is predicted. Off by default: FT is run for a fixed number
    of steps, as the benchmark code runs it; stopping at the first correct prediction (about 4 steps here)
    leaves the weights barely moved and so inflates FT's locality."""

    def __post_init__(self) -> None:
        require_positive(
            "finetune", layers=self.layers, learning_rate=self.learning_rate, max_steps=self.max_steps
        )


class FineTuneEditor(Editor):
    """Trains the last layers in place; their original weights are kept and copied back by `restore`.

    Sequential edits keep training the same weights, one edit after another.
    """

    def __init__(self, backbone: Backbone, config: FineTuneConfig) -> None:
        self.backbone = backbone
        self.config = config
        layers = backbone.last_layers(config.layers)
        self.parameters = [p for i in layers for p in backbone.layers[i].parameters()]
        self.original = [p.detach().clone() for p in self.parameters]
        self.tail = TailRunner(backbone, layers[0])

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, original in zip(self.parameters, self.original, strict=True):
                parameter.copy_(original)

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        start, config = time.perf_counter(), self.config
        eos = self.backbone.encoder.tokenizer.eos_token_id
        inputs = append_eos(inputs, eos) if eos is not None else inputs
        labels = inputs["labels"]
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        try:
            with torch.enable_grad():
                prefix = self.tail.capture(inputs)
                optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
                for step in range(config.max_steps):
                    logits = self.tail.logits(prefix)
                    if config.stop_early and bool(exact_match(logits, labels).all()):
                        return EditReport(step, time.perf_counter() - start, True)
                    loss = answer_loss(logits, labels)
                    if not torch.isfinite(loss):  # diverged: stop (the loop marks the edit non-finite)
                        return EditReport(step, time.perf_counter() - start, False)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            with torch.no_grad():
                success = bool(exact_match(self.tail.logits(prefix), labels).all())
            return EditReport(config.max_steps, time.perf_counter() - start, success)
        finally:
            for parameter in self.parameters:
                parameter.requires_grad_(False)
