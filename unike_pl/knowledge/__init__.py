"""The knowledge memory: mined triplets, their hidden states, their index and the disentangling encoders."""

from unike_pl.knowledge.datamodule import KnowledgeMemoryDataModule, MemoryConfig, MemorySource

__all__ = ["KnowledgeMemoryDataModule", "MemoryConfig", "MemorySource"]
