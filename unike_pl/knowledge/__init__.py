"""The knowledge memory: mined triplets, their hidden states, their index and the disentangling encoders."""

from unike_pl.knowledge.cache import MemoryConfig, MemorySource
from unike_pl.knowledge.datamodule import KnowledgeMemoryDataModule

__all__ = ["KnowledgeMemoryDataModule", "MemoryConfig", "MemorySource"]
