"""What training a BLIP-2 on the world's pretraining corpus needs, whichever of its weights are trained."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from unike_pl.backbones.loader import Backbone
from unike_pl.hooks import capture_output
from unike_pl.losses import answer_loss_sum
from unike_pl.metrics.scorers import exact_match
from unike_pl.metrics.validation import ValidationMeans
from unike_pl.world.incontext import CAPTION, CONTEXT_KINDS, RETAIN
from unike_pl.world.scenes import ASKED_ATTRIBUTES, HEAD_ATTRIBUTES, VOCABULARY

CATEGORIES = (
    *(f"{kind}_{attribute}" for kind in ("vqa", "verify", "compose") for attribute in ASKED_ATTRIBUTES),
    "caption",
    "text",
    # Context-reading examples per kind and asked attribute (or caption), and text facts after a context.
    *(f"{kind}_{attribute}" for kind in CONTEXT_KINDS for attribute in (*ASKED_ATTRIBUTES, CAPTION)),
    RETAIN,
)


class WorldTraining(L.LightningModule):
    """Base of the world pretraining and the bridge training: the answer loss of every modality group plus
    an auxiliary attribute loss on the vision tokens, exact match per question category on validation, and
    AdamW with linear warm-up and cosine decay over the parameters that require gradients.

    Subclasses load `self.backbone` in `configure_model`, choose what it trains, and save as hyperparameters
    `learning_rate`, `weight_decay`, `warmup_steps` and `attribute_loss_weight`.
    """

    def __init__(self, vision_hidden: int) -> None:
        """
        Args:
            vision_hidden: width of the vision encoder's tokens, the input of the attribute heads.
        """
        super().__init__()
        self.backbone: Backbone | None = None
        self.val_losses = ValidationMeans(("loss", "attribute_loss"))
        self.exact = ValidationMeans(CATEGORIES, prefix="val/exact_")
        # A vision stack trained from scratch learns only slowly through the language loss alone; these
        # heads predict each scene attribute from its mean-pooled tokens. They are never exported.
        self.attribute_heads = nn.ModuleDict(
            {name: nn.Linear(vision_hidden, len(VOCABULARY[name])) for name in HEAD_ATTRIBUTES}
        )

    def needs_starting_model(self) -> bool:
        """Whether `fit` must first write the starting model to `hparams.model_dir`; outside `fit` a
        missing model folder is an error."""
        if (Path(self.hparams.model_dir) / "config.json").is_file():
            return False
        if self.trainer.state.fn != TrainerFn.FITTING:
            raise FileNotFoundError(
                f"model folder {self.hparams.model_dir} does not exist; train it with `fit`"
            )
        return True

    def _loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        total, tokens, attribute_loss = 0.0, 0, torch.zeros((), device=self.device)
        for group in batch.values():
            self._check_length(group)
            with capture_output(self.backbone.model.vision_model) as vision:
                logits = self.backbone(group["inputs"])
            loss_sum, count = answer_loss_sum(logits, group["inputs"]["labels"])
            total, tokens = total + loss_sum, tokens + count
            if "attributes" in group:
                attribute_loss = self._attribute_loss(vision["output"].last_hidden_state, group["attributes"])
            if stage == "val":
                self._update_accuracy(logits, group)
        loss = total / tokens
        size = sum(len(g["categories"]) for g in batch.values())
        if stage == "val":
            self.val_losses.update("loss", loss, size)
            self.val_losses.update("attribute_loss", attribute_loss, size)
        else:
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            self.log("train/attribute_loss", attribute_loss, batch_size=size)
        return loss + self.hparams.attribute_loss_weight * attribute_loss

    def _check_length(self, group: dict[str, Any]) -> None:
        """A clear error instead of an index error deep in the position embeddings."""
        lengths = group["inputs"]["attention_mask"].sum(-1)
        longest = int(lengths.argmax())
        if int(lengths[longest]) > self.backbone.max_positions:
            raise ValueError(
                f"a {group['categories'][longest]} example is {int(lengths[longest])} tokens long (image "
                f"tokens included), more than the model's {self.backbone.max_positions} positions: raise "
                "size.max_positions"
            )

    def _attribute_loss(self, embeddings: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every attribute head on the vision tokens (batch, patches + 1, hidden)."""
        pooled = embeddings.mean(dim=1)  # (batch, hidden)
        losses = [
            F.cross_entropy(head(pooled), attributes[:, i])
            for i, head in enumerate(self.attribute_heads.values())
        ]
        return torch.stack(losses).mean()

    def _update_accuracy(self, logits: torch.Tensor, group: dict[str, Any]) -> None:
        scores = exact_match(logits, group["inputs"]["labels"])
        for category, score in zip(group["categories"], scores, strict=True):
            self.exact.update(category, score * 100)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._loss(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_losses.log(self, prog_bar=("loss",))
        self.exact.log(self)

    def configure_optimizers(self) -> dict[str, Any]:
        trained = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in trained if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in trained if not (p.ndim >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.learning_rate,
        )
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(self.hparams.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
