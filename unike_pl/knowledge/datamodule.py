"""KnowledgeMemoryDataModule: builds the knowledge memory once (cached on disk) and serves its triplets to
the disentangling encoders."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from unike_pl.backbones.encoding import Example
from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import MMEditDataset
from unike_pl.data.sharding import eval_sampler
from unike_pl.errors import UserError
from unike_pl.knowledge.cache import MemoryConfig, build_memory, source_datasets
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory, Triplet
from unike_pl.metrics import names


class TripletExamples:
    """The examples (image, question, answer) of memory triplets, read from their source files on demand:
    `examples(rows)` for rows of `triplets`."""

    def __init__(self, config: MemoryConfig, triplets: Sequence[Triplet]) -> None:
        self.triplets = list(triplets)
        self.sources: dict[str, tuple[MMEditDataset, dict[int, int]]] = {}
        for source, dataset in zip(config.sources, source_datasets(config), strict=True):
            positions = {record.index: position for position, record in enumerate(dataset.records)}
            self.sources[source.file] = (dataset, positions)

    def __call__(self, rows: Sequence[int]) -> list[Example]:
        examples = []
        for row in rows:
            triplet = self.triplets[row]
            if triplet.file not in self.sources:
                raise UserError(
                    f"memory triplet {row} comes from {triplet.file}, which is not a memory source"
                )
            dataset, positions = self.sources[triplet.file]
            examples.append(dataset.case(positions[triplet.record], triplet.case))
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
    """`setup` builds the memory with the base model where it is missing (every process mines its share
    of it on its own device: see `unike_pl.knowledge.cache`), then loads it and splits its triplets.
    (Editing indexes the memory with FAISS when it starts: see `KnowledgeInjection`.)"""

    def __init__(
        self,
        backbone: BackboneConfig,
        memory: MemoryConfig,
        root: str = ".",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the base model whose errors and states make the memory.
            memory: sources, layers and cache location.
            root: the dataset's folder, which the sources' relative paths are inside (as the editing
                run's `data.init_args.root`).
            batch_size: triplets per encoder training batch.
            val_fraction: share of records held out (all their triplets) to measure how well the spaces
                separate and to fit the gate threshold.
            seed: seed of the train / validation split.
        """
        super().__init__()
        self.save_hyperparameters()
        self.backbone_config = backbone
        self.memory_config = memory.under(root)
        self.memory: KnowledgeMemory | None = None

    def setup(self, stage: str) -> None:
        # Not in `prepare_data`: that runs on one process per machine, before the devices are set up.
        if self.memory is not None:
            return
        trainer = self.trainer
        if trainer is None:
            path = build_memory(self.backbone_config, self.memory_config)
        else:
            strategy = trainer.strategy
            path = build_memory(
                self.backbone_config,
                self.memory_config,
                trainer.global_rank,
                trainer.world_size,
                strategy.root_device,
                strategy.barrier,
            )
        self.memory = KnowledgeMemory.load(path)
        # Held out by record, not by triplet: the gate is fitted on records none of whose cases were
        # trained on, as the eval edits will be.
        records = record_numbers(self.memory)
        count = int(records.max()) + 1
        if count < 2:
            raise UserError(
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
