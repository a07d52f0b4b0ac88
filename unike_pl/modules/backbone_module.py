"""Base LightningModule for anything that runs a frozen MLLM backbone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L

from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone
from unike_pl.errors import UserError
from unike_pl.metrics.groups import GroupedMetrics

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is not strict (the backbone is not in checkpoints), so weights this module has no place
        # for would be dropped without a word: a checkpoint of another method is refused instead.
        own = self.state_dict()
        foreign = sorted({key.split(".")[0] for key in checkpoint.get("state_dict", {}) if key not in own})
        if foreign:
            source = checkpoint.get("hyper_parameters", {}).get("_class_path", "another module")
            raise UserError(
                f"the checkpoint holds weights {type(self).__name__} has no place for "
                f"({', '.join(f'{part}.*' for part in foreign)}): it was written by {source}; pass a "
                "checkpoint of this method"
            )

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


def set_record_groups(module: L.LightningModule, metrics: Iterable[GroupedMetrics]) -> None:
    """Give per-group metrics the labelled groups of the records the run scores: those of the whole eval
    split (the datamodule's `eval_groups`, none for data without groups), so that every process holds
    the same metric objects."""
    eval_groups = getattr(module.trainer.datamodule, "eval_groups", None)
    groups = eval_groups() if callable(eval_groups) else ()
    if any([grouped.set_groups(groups) for grouped in metrics]):
        # Lightning looks up each logged metric's attribute once and caches it; these metrics are new.
        module._metric_attributes = None


def log_metrics(module: L.LightningModule, metrics: GroupedMetrics, batch_size: int) -> None:
    """Log the metrics of all records and of each group (`GroupedMetrics.logged`)."""
    for name, metric in metrics.logged():
        module.log(name, metric, batch_size=batch_size)
