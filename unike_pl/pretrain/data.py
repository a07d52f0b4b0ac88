"""The world's pretraining corpus as batches: image questions, captions and text-only facts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unike_pl.backbones.encoding import Example, PromptEncoder
from unike_pl.backbones.loader import BackboneConfig, load_encoder
from unike_pl.data.cases import open_image
from unike_pl.data.sharding import eval_sampler
from unike_pl.errors import MissingFile, UserError
from unike_pl.world.confusions import perceive
from unike_pl.world.context import IMAGE_ROOT
from unike_pl.world.scenes import HEAD_ATTRIBUTES, VOCABULARY, Scene

SPLIT_FILES = {"train": "pretrain/pretrain_train.json", "val": "pretrain/pretrain_val.json"}
FIELDS = ("image", "question", "answer", "kind")


@dataclass(frozen=True)
class PretrainExample:
    example: Example
    category: str
    """`kind` or `kind_attribute` (vqa_color, caption, text, ...), for accuracy per question type."""
    attributes: tuple[int, ...] | None
    """Index of each head attribute's value (`HEAD_ATTRIBUTES`: the asked ones and the companion) in the
    scene as the labels perceive it (None without image)."""


def category_of(item: dict[str, Any]) -> str:
    return f"{item['kind']}_{item['attribute']}" if item.get("attribute") else item["kind"]


def perceived_attributes(item: dict[str, Any]) -> tuple[int, ...] | None:
    """The scene's attribute values as the pretraining labels state them (confusion rules applied)."""
    if item.get("scene") is None:
        return None
    scene = perceive(Scene.from_dict(item["scene"]))
    return tuple(VOCABULARY[name].index(scene.value(name)) for name in HEAD_ATTRIBUTES)


class PretrainDataset(Dataset):
    """Pretraining examples; text-only facts can be repeated, since a fact is learnt by seeing it often, or
    left out (`text_repeats` 0)."""

    def __init__(self, file: Path, image_root: Path, text_repeats: int = 1) -> None:
        self.file, self.image_root = file, image_root
        if not file.is_file():
            raise MissingFile(f"pretraining file {file} does not exist; generate the world first")
        self.items = json.loads(file.read_text(encoding="utf-8"))
        for index, item in enumerate(self.items):
            missing = [field for field in FIELDS if field not in item]
            if missing:
                raise UserError(f"{file}, record {index}, field {missing[0]!r}: missing")
        text = [i for i, item in enumerate(self.items) if item["image"] is None]
        if text_repeats < 0:
            raise UserError(f"text_repeats must be 0 or more, not {text_repeats}")
        if text_repeats == 0:
            self.order = [i for i, item in enumerate(self.items) if item["image"] is not None]
        else:
            self.order = list(range(len(self.items))) + text * (text_repeats - 1)

    def __len__(self) -> int:
        return len(self.order)

    def text_lengths(self) -> list[int]:
        """Characters of each example's question and answer: a tokenizer-free proxy of its length."""
        return [len(self.items[index]["question"]) + len(self.items[index]["answer"]) for index in self.order]

    def __getitem__(self, position: int) -> PretrainExample:
        index = self.order[position]
        item = self.items[index]
        image = item["image"] and open_image(self.image_root / item["image"], self.file, index, "image")
        example = Example(item["question"], item["answer"], image or None)
        return PretrainExample(example, category_of(item), perceived_attributes(item))


class LengthGroupedOrder(Sampler[int]):
    """A shuffled order in which each run of `batch_size` examples has similar lengths.

    Every epoch the examples are shuffled, cut into pools of `pool_batches` batches, sorted by length within
    a pool and cut into batches, and the batches are shuffled; only the last batch may be short. Batches
    pad to their longest example, so grouping keeps the few long in-context examples from padding every
    batch to their length. Deterministic for a seed and an epoch (`set_epoch`, which Lightning calls).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, pool_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.pool_batches = lengths, batch_size, seed, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([index for batch in shuffled + short for index in batch])


class PretrainCollator:
    """One encoded batch per modality: BLIP-2 cannot mix text-only and image inputs in one forward."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder

    def __call__(self, samples: list[PretrainExample]) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for name, with_image in (("multimodal", True), ("text", False)):
            chosen = [s for s in samples if (s.example.image is not None) == with_image]
            if chosen:
                groups[name] = {
                    # EOS after every answer: the model learns to stop, so greedy answers are gradeable.
                    "inputs": self.encoder.encode([s.example for s in chosen], end_with_eos=True),
                    "categories": [s.category for s in chosen],
                }
                if with_image:
                    groups[name]["attributes"] = torch.tensor([s.attributes for s in chosen])
        return groups


class WorldPretrainDataModule(L.LightningDataModule):
    """Serves `pretrain/pretrain_{train,val}.json` of a generated world."""

    def __init__(
        self,
        world_root: str,
        backbone: BackboneConfig,
        batch_size: int = 64,
        num_workers: int = 0,
        text_repeats: int = 1,
        group_by_length: bool = True,
    ) -> None:
        """
        Args:
            world_root: folder of a world written by `python -m unike_pl.world`.
            backbone: the model folder whose tokenizer and image processor encode the batches.
            batch_size: examples per batch.
            num_workers: DataLoader worker processes.
            text_repeats: how often each text-only fact appears per training epoch; 0 leaves them out of
                training and validation (a frozen language model cannot learn the world's facts).
            group_by_length: train on batches of similar lengths (`LengthGroupedOrder`), so that the long
                in-context examples do not pad every batch; under DDP Lightning's distributed sampler
                replaces it (plain shuffling).
        """
        super().__init__()
        self.world_root = Path(world_root)
        self.backbone = backbone
        self.batch_size, self.num_workers, self.text_repeats = batch_size, num_workers, text_repeats
        self.group_by_length = group_by_length

    def setup(self, stage: str) -> None:
        self.collator = PretrainCollator(load_encoder(self.backbone))
        self.datasets = {
            split: PretrainDataset(
                self.world_root / file,
                self.world_root / IMAGE_ROOT,
                self.text_repeats if split == "train" else min(1, self.text_repeats),
            )
            for split, file in SPLIT_FILES.items()
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if shuffle:
            order = (
                LengthGroupedOrder(dataset.text_lengths(), self.batch_size) if self.group_by_length else None
            )
        else:  # validation: every example once over all processes (Lightning's sampler would repeat some)
            order = eval_sampler(dataset, self.batch_size, self.trainer)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and order is None,
            sampler=order,
            generator=torch.Generator().manual_seed(0),
            num_workers=self.num_workers,
            collate_fn=self.collator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
