"""Pretraining the embedded default model on the synthetic world."""

from unike_pl.pretrain.data import WorldPretrainDataModule
from unike_pl.pretrain.init_model import init_world_model
from unike_pl.pretrain.module import WorldPretraining

__all__ = ["WorldPretrainDataModule", "WorldPretraining", "init_world_model"]
