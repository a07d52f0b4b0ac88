"""Pretraining the embedded BLIP-2 on the synthetic world (all weights trained: it starts from nothing)."""

from __future__ import annotations

from unike_pl.backbones.factory import ModelSize
from unike_pl.backbones.loader import BackboneConfig, load_backbone
from unike_pl.pretrain.init_model import init_world_model
from unike_pl.pretrain.training import WorldTraining


class WorldPretraining(WorldTraining):
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
                vision encoder's output tokens (mean-pooled); the heads are not part of the exported model.
            seed: initialisation seed.
        """
        model_size = size or ModelSize()
        super().__init__(model_size.vision_hidden)
        self.save_hyperparameters()
        self.size = model_size

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(self.hparams.model_dir, local_files_only=True)

    def prepare_data(self) -> None:
        if not self.needs_starting_model():
            return
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
