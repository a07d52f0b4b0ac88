"""KnowledgeMemoryDataModule: mines the knowledge memory once (cached on disk), indexes it, and serves
its triplets to the disentangling encoders."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from unike_pl.backbones.fingerprint import backbone_fingerprint
from unike_pl.backbones.loader import BackboneConfig, load_backbone
from unike_pl.data.cases import MMEditDataset
from unike_pl.data.mmedit import read_mmedit
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory
from unike_pl.knowledge.mining import mine_memory


@dataclass
class MemorySource:
    """One MMEdit training split that the knowledge memory is mined from."""

    file: str
    image_root: str
    rephrase_image_root: str
    task: str = "vqa"


@dataclass
class MemoryConfig:
    """Where the knowledge memory comes from and where it is cached."""

    sources: list[MemorySource]
    """Training splits mined for triplets (never the eval split)."""
    edited_layers: int = 4
    """States are kept for the last `edited_layers` decoder layers."""
    cache_dir: str = "runs/knowledge_memory"
    """Parent folder of the cache; each (model, data, layers) combination gets its own sub-folder."""
    use_template: bool = False
    """Wrap VQA questions as `Question: {} Short answer:` (as the editing run must)."""
    chunk_records: int = 64
    """Records mined per cached chunk: an interrupted build resumes at the first missing chunk."""
    max_new_tokens: int = 16
    """Greedy decoding cap when reading the model's wrong answers."""
    limit: int | None = None
    """Mine only the first `limit` records of each source (quick runs and tests)."""


def memory_path(backbone: BackboneConfig, config: MemoryConfig) -> Path:
    """The cache file of this model, these sources and layers: a change to any of them is a new file."""
    digest = hashlib.sha256(backbone_fingerprint(backbone).encode())
    for source in config.sources:
        digest.update(json.dumps(asdict(source), sort_keys=True).encode())
        digest.update(hashlib.sha256(Path(source.file).read_bytes()).digest())
    digest.update(
        f"layers={config.edited_layers};template={config.use_template};limit={config.limit};"
        f"tokens={config.max_new_tokens}".encode()
    )
    return Path(config.cache_dir) / digest.hexdigest()[:16] / "memory.pt"


def build_memory(backbone_config: BackboneConfig, config: MemoryConfig) -> Path:
    """Mine every source into the cache (chunk by chunk, resumable) and return the memory file."""
    path = memory_path(backbone_config, config)
    if path.is_file():
        return path
    backbone = load_backbone(backbone_config)
    layers = backbone.last_layers(config.edited_layers)
    parts = []
    for number, source in enumerate(config.sources):
        split = read_mmedit(source.file, source.task, source.image_root, source.rephrase_image_root)
        dataset = MMEditDataset(split, config.use_template, config.limit)
        for start in range(0, len(dataset), config.chunk_records):
            chunk = path.parent / "chunks" / f"{number:02d}_{start:07d}.pt"
            if not chunk.is_file():
                samples = [dataset[i] for i in range(start, min(start + config.chunk_records, len(dataset)))]
                mine_memory(backbone, layers, samples, source.file, config.max_new_tokens).save(chunk)
            parts.append(KnowledgeMemory.load(chunk))
    memory = KnowledgeMemory.concatenate(parts)
    if len(memory) == 0:
        raise ValueError(f"the model answers every training question right: no triplets in {config.sources}")
    memory.save(path)
    return path


def load_memory(backbone: BackboneConfig, config: MemoryConfig) -> KnowledgeMemory:
    """The cached memory of this backbone and config; it must have been built (by `fit`) before."""
    return KnowledgeMemory.load(memory_path(backbone, config))


class TripletStates(Dataset):
    """Triplet rows of the memory as {"sem", "pos", "neg"}: (layers, hidden) each."""

    def __init__(self, memory: KnowledgeMemory, rows: torch.Tensor) -> None:
        self.tensors = {kind: memory.stacked(kind, rows) for kind in STATE_KINDS[:3]}

    def __len__(self) -> int:
        return len(self.tensors["sem"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {kind: tensor[index] for kind, tensor in self.tensors.items()}


class KnowledgeMemoryDataModule(L.LightningDataModule):
    """`prepare_data` builds the memory with the base model; `setup` loads it and splits its triplets.
    (Editing indexes the memory with FAISS when it starts: see `KnowledgeInjection`.)"""

    def __init__(
        self,
        backbone: BackboneConfig,
        memory: MemoryConfig,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the base model whose errors and states make the memory.
            memory: sources, layers and cache location.
            batch_size: triplets per encoder training batch.
            val_fraction: share of triplets held out to measure how well the spaces separate.
            seed: seed of the train / validation split.
        """
        super().__init__()
        self.save_hyperparameters()
        self.backbone_config = backbone
        self.memory_config = memory
        self.memory: KnowledgeMemory | None = None

    def prepare_data(self) -> None:
        build_memory(self.backbone_config, self.memory_config)

    def setup(self, stage: str) -> None:
        if self.memory is not None:
            return
        self.memory = load_memory(self.backbone_config, self.memory_config)
        order = torch.randperm(len(self.memory), generator=torch.Generator().manual_seed(self.hparams.seed))
        held_out = max(1, int(len(order) * self.hparams.val_fraction))
        self.splits = {
            "train": TripletStates(self.memory, order[held_out:]),
            "val": TripletStates(self.memory, order[:held_out]),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.hparams.batch_size)
