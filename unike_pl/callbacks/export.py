"""Save a trained backbone as a plain transformers folder that the loader opens like a hub model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from unike_pl.backbones.factory import save_backbone
from unike_pl.io import atomic_directory


class ExportPretrained(L.Callback):
    """At the end of `fit`, write `pl_module.backbone` (model and processor) to `output_dir` atomically."""

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
                save_backbone(model, backbone.encoder.processor, staging)
            finally:
                model.to(original)
