"""Save what `fit` trained: a whole backbone as a transformers folder, or only a BLIP-2 bridge."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from unike_pl.backbones.assembly import save_bridge
from unike_pl.backbones.factory import save_backbone
from unike_pl.io import atomic_directory


class ExportPretrained(L.Callback):
    """At the end of `fit`, write `pl_module.backbone` (model, tokenizer and image processor) to
    `output_dir` atomically."""

    def __init__(self, output_dir: str, dtype: str = "float32") -> None:
        """
        Args:
            output_dir: the model folder to write (replaced whole when it exists).
            dtype: weights dtype on disk (float16 halves the size; the loader casts back).
        """
        self.output_dir = Path(output_dir)
        self.dtype = getattr(torch, dtype)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        backbone = pl_module.backbone
        model = backbone.model
        original = next(model.parameters()).dtype
        with atomic_directory(self.output_dir) as staging:
            model.to(self.dtype)
            try:
                save_backbone(model, backbone.encoder, staging)
            finally:
                model.to(original)


class ExportBridge(L.Callback):
    """At the end of `fit`, write the trained vision stack of `pl_module.backbone` (bridge weights and
    sizes, see `unike_pl.backbones.assembly`) to `output_dir` atomically."""

    def __init__(self, output_dir: str) -> None:
        """
        Args:
            output_dir: the bridge folder to write (replaced whole when it exists).
        """
        self.output_dir = Path(output_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_bridge(pl_module.backbone.model, pl_module.bridge, self.output_dir)
