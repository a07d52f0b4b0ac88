"""Pretraining the embedded models on the synthetic world (the tiny BLIP-2, the SmolLM2 bridge)."""

from unike_pl.pretrain.bridge import BridgeTraining
from unike_pl.pretrain.data import WorldPretrainDataModule
from unike_pl.pretrain.init_model import init_world_model
from unike_pl.pretrain.module import WorldPretraining

__all__ = ["BridgeTraining", "WorldPretrainDataModule", "WorldPretraining", "init_world_model"]
