"""Pretraining the embedded BLIP-2 on the synthetic world (all weights trained: it starts from nothing)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric

from unike_pl.backbones.factory import ModelSize
from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone
from unike_pl.hooks import capture_output
from unike_pl.losses import answer_loss_sum
from unike_pl.metrics.scorers import exact_match
from unike_pl.pretrain.init_model import init_world_model
from unike_pl.world.scenes import ASKED_ATTRIBUTES, VOCABULARY

CATEGORIES = (
    *(f"{kind}_{attribute}" for kind in ("vqa", "verify", "compose") for attribute in ASKED_ATTRIBUTES),
    "caption",
    "text",
)


class WorldPretraining(L.LightningModule):
    """`fit` trains a small BLIP-2 OPT on the world's pretraining corpus; ExportPretrained saves it."""

    def __init__(
        self,
        world_root: str,
        model_dir: str,
        size: ModelSize | None = None,
        vocab_size: int = 1200,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 200,
        attribute_loss_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            world_root: the generated world whose text trains the tokenizer.
            model_dir: the model folder to train or evaluate, opened by the loader; when it does not exist,
                `prepare_data` writes an untrained model there (tokenizer learnt from the world's text).
            size: model dimensions.
            vocab_size: BPE vocabulary size of the tokenizer learnt from the world's text.
            learning_rate: AdamW peak learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps before cosine decay.
            attribute_loss_weight: weight of the auxiliary loss that predicts each scene attribute from the
                vision encoder's output tokens (mean-pooled). A vision stack trained from scratch learns
                only slowly through the language loss alone; the heads are not part of the exported model.
            seed: initialisation seed.
        """
        super().__init__()
        self.save_hyperparameters()
        self.size = size or ModelSize()
        self.backbone: Backbone | None = None
        self.exact = nn.ModuleDict({category: MeanMetric() for category in CATEGORIES})
        self.attribute_heads = nn.ModuleDict(
            {name: nn.Linear(self.size.vision_hidden, len(VOCABULARY[name])) for name in ASKED_ATTRIBUTES}
        )

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(self.hparams.model_dir, local_files_only=True)

    def prepare_data(self) -> None:
        if (Path(self.hparams.model_dir) / "config.json").is_file():
            return
        if self.trainer.state.fn != TrainerFn.FITTING:
            raise FileNotFoundError(
                f"model folder {self.hparams.model_dir} does not exist; train it with `fit`"
            )
        init_world_model(
            self.hparams.world_root,
            self.hparams.model_dir,
            self.size,
            self.hparams.vocab_size,
            self.hparams.seed,
        )

    def configure_model(self) -> None:
        if self.backbone is None:
            # The loader hands out a frozen model in eval mode; here every weight is trained. Eval mode is
            # kept: the model trains without dropout (the world is small and each scene is seen few times).
            self.backbone = load_backbone(self.backbone_config)
            self.backbone.model.requires_grad_(True)

    def _loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        total, tokens, attribute_loss = 0.0, 0, torch.zeros((), device=self.device)
        for group in batch.values():
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
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size)
        self.log(f"{stage}/attribute_loss", attribute_loss, batch_size=size)
        return loss + self.hparams.attribute_loss_weight * attribute_loss

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
            self.exact[category].update(score)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._loss(batch, "val")

    def on_validation_epoch_end(self) -> None:
        for category, metric in self.exact.items():
            if metric.update_count:
                self.log(f"val/exact_{category}", metric.compute() * 100)
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
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
