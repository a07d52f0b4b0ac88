"""Base LightningModule for anything that runs a frozen MLLM backbone."""

from __future__ import annotations

from typing import Any

import lightning as L
from torchmetrics import MetricCollection

from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone

BACKBONE_PREFIX = "backbone."


class BackboneModule(L.LightningModule):
    """Loads the backbone once per process and keeps its frozen weights out of checkpoints.

    Checkpoints of methods hold only what the method trained; the backbone is reloaded from its hub id
    or folder, which is recorded in the hyperparameters.
    """

    def __init__(self, backbone: BackboneConfig) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.backbone: Backbone | None = None
        self.strict_loading = False  # checkpoints do not carry the backbone

    @property
    def mllm(self) -> Backbone:
        """The loaded backbone (Lightning calls `configure_model` before any step)."""
        if self.backbone is None:
            raise RuntimeError("the backbone is not loaded yet: configure_model() loads it")
        return self.backbone

    def configure_model(self) -> None:
        if self.backbone is None:
            self.backbone = load_backbone(self.backbone_config)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BACKBONE_PREFIX)]:
            del state[key]

    def result_settings(self) -> dict[str, Any]:
        """What the results of this module depend on, written beside every score."""
        return {
            "method": type(self).__name__,
            "backbone": self.backbone_config.name_or_path,
            "dtype": self.backbone_config.dtype,
            "prompt_format": self.backbone_config.prompt_format,
        }


def log_scored(module: L.LightningModule, metrics: MetricCollection, batch_size: int) -> None:
    """Log the metrics of a collection that have been updated: the neighbour metrics exist only for data
    with neighbours (the embedded world), and a metric never updated cannot be computed."""
    for key, metric in metrics.items():
        if metric.update_count:
            module.log(key, metric, batch_size=batch_size)
