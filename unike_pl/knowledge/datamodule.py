"""KnowledgeMemoryDataModule: mines the knowledge memory once (cached on disk), indexes it, and serves
its triplets to the disentangling encoders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from unike_pl.backbones.encoding import Example
from unike_pl.backbones.fingerprint import backbone_fingerprint
from unike_pl.backbones.loader import BackboneConfig, load_backbone
from unike_pl.data.cases import MMEditDataset
from unike_pl.data.mmedit import read_mmedit
from unike_pl.data.sharding import eval_sampler
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory, Triplet
from unike_pl.knowledge.mining import mine_memory
from unike_pl.metrics import names


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


class TripletExamples:
    """The examples (image, question, answer) of memory triplets, read from their source files on demand:
    `examples(rows)` for rows of `triplets`."""

    def __init__(self, config: MemoryConfig, triplets: Sequence[Triplet]) -> None:
        self.triplets = list(triplets)
        self.sources: dict[str, tuple[MMEditDataset, dict[int, int]]] = {}
        for source in config.sources:
            split = read_mmedit(source.file, source.task, source.image_root, source.rephrase_image_root)
            dataset = MMEditDataset(split, config.use_template, config.limit)
            positions = {record.index: position for position, record in enumerate(dataset.records)}
            self.sources[source.file] = (dataset, positions)

    def __call__(self, rows: Sequence[int]) -> list[Example]:
        examples = []
        for row in rows:
            triplet = self.triplets[row]
            if triplet.file not in self.sources:
                raise ValueError(
                    f"memory triplet {row} comes from {triplet.file}, which is not a memory source"
                )
            dataset, positions = self.sources[triplet.file]
            examples.append(dataset[positions[triplet.record]].cases[triplet.case])
        return examples


class TripletStates(Dataset):
    """Triplet rows of the memory as {"sem", "pos", "neg"}: (layers, hidden) each, with "record" (the
    row's record number within the memory, shared by every case of that record) and "in_scope" (whether
    the case is in its record's edit scope: the edit, its rephrase or its image rephrase)."""

    def __init__(self, memory: KnowledgeMemory, rows: torch.Tensor) -> None:
        self.tensors = {kind: memory.stacked(kind, rows) for kind in STATE_KINDS[:3]}
        records = record_numbers(memory)
        self.tensors["record"] = records[rows]
        self.tensors["in_scope"] = torch.tensor(
            [memory.triplets[int(row)].case in names.TARGET_CASES for row in rows], dtype=torch.bool
        )
        self.tensors["is_edit"] = torch.tensor(
            [memory.triplets[int(row)].case == names.EDIT for row in rows], dtype=torch.bool
        )

    def __len__(self) -> int:
        return len(self.tensors["sem"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {kind: tensor[index] for kind, tensor in self.tensors.items()}


def record_numbers(memory: KnowledgeMemory) -> torch.Tensor:
    """One number per triplet naming its (file, record): the cases of one record share it, (triplets,)."""
    numbers: dict[tuple[str, int], int] = {}
    return torch.tensor(
        [numbers.setdefault((t.file, t.record), len(numbers)) for t in memory.triplets], dtype=torch.long
    )


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
            val_fraction: share of records held out (all their triplets) to measure how well the spaces
                separate and to fit the gate threshold.
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
        # Held out by record, not by triplet: the gate is fitted on records none of whose cases were
        # trained on, as the eval edits will be.
        records = record_numbers(self.memory)
        count = int(records.max()) + 1
        if count < 2:
            raise ValueError(
                f"the knowledge memory has triplets of {count} record: training and held-out records need 2"
            )
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.hparams.seed))
        held_out = torch.zeros(count, dtype=torch.bool)
        held_out[order[: min(count - 1, max(1, int(count * self.hparams.val_fraction)))]] = True
        rows = torch.arange(len(records))
        self.splits = {
            "train": TripletStates(self.memory, rows[~held_out[records]]),
            "val": TripletStates(self.memory, rows[held_out[records]]),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        held_out, size = self.splits["val"], self.hparams.batch_size
        # Every held-out triplet once over all processes (Lightning's sampler would repeat some).
        return DataLoader(held_out, batch_size=size, sampler=eval_sampler(held_out, size, self.trainer))
