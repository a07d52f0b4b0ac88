"""Training the SmolLM2 model's vision stack on the world, SmolLM2 itself frozen (as BLIP-2 trains it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import Blip2ForConditionalGeneration

from unike_pl.backbones.assembly import BRIDGE_PREFIXES, build_smollm2_blip2, load_bridge_weights
from unike_pl.backbones.factory import BridgeSize, save_backbone
from unike_pl.backbones.loader import BackboneConfig, load_backbone
from unike_pl.io import atomic_directory
from unike_pl.pretrain.training import WorldTraining

BRIDGE_MODULES = ("vision_model", "qformer", "language_projection", "query_tokens")
# The backbone's keys that checkpoints keep (the language model is reachable under two paths, both dropped).
BRIDGE_KEYS = tuple(f"backbone.model.{prefix}" for prefix in BRIDGE_PREFIXES)
# What a warm start may take from another BLIP-2 of the same vision size (the projection depends on the
# language model's width and always starts fresh).
WARM_START_PREFIXES = ("vision_model.", "qformer.", "query_tokens")


class BridgeTraining(WorldTraining):
    """`fit` trains the ViT, Q-Former, query tokens and projection of the SmolLM2 BLIP-2 on the world's
    image questions and captions; ExportBridge saves them (the only weights of the model that are ours)."""

    def __init__(
        self,
        model_dir: str,
        bridge: BridgeSize | None = None,
        warm_start: str | None = None,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 30,
        attribute_loss_weight: float = 1.0,
        prompt_format: str = "smollm2",
        seed: int = 0,
    ) -> None:
        """
        Args:
            model_dir: the full model folder that is trained, opened by the loader; when it does not exist,
                `prepare_data` writes SmolLM2 with an untrained vision stack there.
            bridge: vision-stack sizes.
            warm_start: a saved BLIP-2 folder with a vision stack of the same sizes (the tiny embedded model,
                trained on the same world) whose ViT, Q-Former and query tokens start the training; None
                starts from scratch.
            learning_rate: AdamW peak learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps before cosine decay.
            attribute_loss_weight: weight of the auxiliary loss that predicts each scene attribute from the
                vision encoder's output tokens (mean-pooled); the heads are not exported.
            prompt_format: the prompt format the model is trained (and later used) with.
            seed: initialisation seed of the untrained vision stack.
        """
        bridge_size = bridge or BridgeSize()
        super().__init__(bridge_size.vision_hidden)
        self.save_hyperparameters()
        self.bridge = bridge_size
        self.strict_loading = False  # checkpoints do not carry the language model

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            self.hparams.model_dir, prompt_format=self.hparams.prompt_format, local_files_only=True
        )

    def prepare_data(self) -> None:
        if not self.needs_starting_model():
            return
        torch.manual_seed(self.hparams.seed)
        model, processor = build_smollm2_blip2(self.bridge)
        if self.hparams.warm_start is not None:
            warm_start(model, self.hparams.warm_start)
        with atomic_directory(self.hparams.model_dir) as staging:
            save_backbone(model, processor, staging)

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        # The language model stays frozen and in eval mode (the loader's state); only the bridge trains.
        self.backbone = load_backbone(self.backbone_config)
        for name in BRIDGE_MODULES:
            getattr(self.backbone.model, name).requires_grad_(True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints keep the bridge and the attribute heads; SmolLM2 comes from its package."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("backbone.") and not k.startswith(BRIDGE_KEYS)]:
            del state[key]


def warm_start(model: Blip2ForConditionalGeneration, folder: str) -> None:
    """Copy the ViT, Q-Former and query tokens of the BLIP-2 saved in `folder` into `model`."""
    file = Path(folder) / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"warm-start model {file} does not exist")
    state = {k: v for k, v in load_file(str(file)).items() if k.startswith(WARM_START_PREFIXES)}
    load_bridge_weights(model, state, file, WARM_START_PREFIXES)
