"""The knowledge memory's cache: which file a (model, sources, layers) combination gets, and how it is built.

The build is cut into chunks of consecutive records, each saved on its own: an interrupted build resumes at
the chunks it lacks. With several processes, chunk i is mined by process i mod world size on its own
device; when all have finished, process 0 joins the chunks in order into the memory file. The chunks are
the same batches wherever they are mined, so the memory is the same on one process as on several.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from unike_pl.backbones.fingerprint import backbone_fingerprint
from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone
from unike_pl.data.cases import MMEditDataset
from unike_pl.data.fingerprint import split_fingerprint
from unike_pl.data.mmedit import MMEditSplit, read_mmedit, under_root
from unike_pl.errors import UserError
from unike_pl.eta import piped, progress_line
from unike_pl.knowledge.index import IndexConfig
from unike_pl.knowledge.memory import KnowledgeMemory
from unike_pl.knowledge.mining import mine_memory
from unike_pl.settings import require_positive

MMEDIT_TRAINING_SPLITS = (("vqa", "vqa/vqa_train.json"), ("caption", "caption/caption_train_edit.json"))
"""(task, file) of MMEdit's training splits, in its folder layout."""


@dataclass
class MemorySource:
    """One MMEdit training split that the knowledge memory is mined from."""

    file: str
    """The split's JSON file (inside the data's root when relative)."""
    image_root: str = "images"
    """Folder of its `image` and `m_loc` paths (the world's and MMEdit's layout under the root)."""
    rephrase_image_root: str = "images_rephrase"
    """Folder of its `image_rephrase` paths."""
    task: str = "vqa"


@dataclass
class MemoryConfig:
    """Where the knowledge memory comes from and where it is cached."""

    sources: list[MemorySource] | None = None
    """Training splits mined for triplets (never the eval split); None: MMEdit's two training splits
    inside the data's root, `vqa/vqa_train.json` and `caption/caption_train_edit.json` (the embedded
    world has the same files)."""
    edited_layers: int = 4
    """States are kept for the last `edited_layers` decoder layers."""
    cache_dir: str = "runs/knowledge_memory"
    """Parent folder of the cache; each (model, data, layers) combination gets its own sub-folder. With
    several machines it must be on a filesystem they share."""
    use_template: bool = False
    """Wrap VQA questions as `Question: {} Short answer:` (as the editing run must)."""
    chunk_records: int = 64
    """Records mined per cached chunk (one forward batch per evaluation case): an interrupted build
    resumes at the first missing chunk, and processes share the build chunk by chunk."""
    max_new_tokens: int = 16
    """Greedy decoding cap when reading the model's wrong answers."""
    limit: int | None = None
    """Mine only the first `limit` records of each source (quick runs and tests)."""
    allow_outside_roots: bool = False
    """Read image paths that are absolute or contain `..` (refused by default: they leave the roots)."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """How editing searches the memory's keys (not part of the memory: the cache does not depend on it)."""

    def under(self, root: str) -> MemoryConfig:
        """These settings with the sources' relative paths inside the dataset folder `root`."""
        sources = [
            MemorySource(
                under_root(root, source.file),
                under_root(root, source.image_root),
                under_root(root, source.rephrase_image_root),
                source.task,
            )
            for source in self.sources
        ]
        return replace(self, sources=sources)

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = [MemorySource(file, task=task) for task, file in MMEDIT_TRAINING_SPLITS]
        require_positive(
            "memory",
            edited_layers=self.edited_layers,
            chunk_records=self.chunk_records,
            max_new_tokens=self.max_new_tokens,
            limit=self.limit,
        )


def memory_path(backbone: BackboneConfig, config: MemoryConfig) -> Path:
    """The cache file of this model, these sources (the contents of their files and images, wherever they
    lie) and layers: a change to any of them is a new file."""
    digest = hashlib.sha256(backbone_fingerprint(backbone).encode())
    for source, split in zip(config.sources, source_splits(config), strict=True):
        digest.update(json.dumps({"task": source.task, **split_fingerprint(split)}, sort_keys=True).encode())
    digest.update(
        f"layers={config.edited_layers};template={config.use_template};limit={config.limit};"
        f"tokens={config.max_new_tokens}".encode()
    )
    return Path(config.cache_dir) / digest.hexdigest()[:16] / "memory.pt"


@dataclass(frozen=True)
class Chunk:
    """Records [start, stop) of source number `source`, cached in `file`."""

    source: int
    start: int
    stop: int
    file: Path


def source_splits(config: MemoryConfig) -> list[MMEditSplit]:
    """Every source, read and checked; once per process while its file keeps its size and modification
    time (the memory's key, its build and the editing run's memory questions all read them)."""
    return [
        _read_source(
            source.file,
            source.task,
            source.image_root,
            source.rephrase_image_root,
            config.allow_outside_roots,
            _signature(source.file),
        )
        for source in config.sources
    ]


def _signature(file: str) -> tuple[int, int] | None:
    path = Path(file)
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


@functools.lru_cache(maxsize=8)
def _read_source(
    file: str,
    task: str,
    image_root: str,
    rephrase_image_root: str,
    allow_outside_roots: bool,
    signature: tuple[int, int] | None,
) -> MMEditSplit:
    return read_mmedit(file, task, image_root, rephrase_image_root, allow_outside_roots=allow_outside_roots)


def source_datasets(config: MemoryConfig) -> list[MMEditDataset]:
    """The records of every source, as mining and the triplets' examples read them."""
    return [MMEditDataset(split, config.use_template, config.limit) for split in source_splits(config)]


def memory_chunks(path: Path, config: MemoryConfig, datasets: list[MMEditDataset]) -> list[Chunk]:
    """Every chunk of the build, in memory order. The name holds both bounds, so a build resumed with
    another `chunk_records` never reads a chunk of other records."""
    size = config.chunk_records
    return [
        Chunk(number, start, stop, path.parent / "chunks" / f"{number:02d}_{start:07d}_{stop:07d}.pt")
        for number, dataset in enumerate(datasets)
        for start in range(0, len(dataset), size)
        for stop in [min(start + size, len(dataset))]
    ]


def build_memory(
    backbone_config: BackboneConfig,
    config: MemoryConfig,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    barrier: Callable[[], None] = lambda: None,
    loaded: Backbone | None = None,
) -> Path:
    """Mine this process's share of the missing chunks on `device`, wait for the others (`barrier`), let
    process 0 join them, and return the memory file (which every process then reads). `loaded`: the
    backbone already loaded (and placed) by the caller, mined with instead of a second copy."""
    path = memory_path(backbone_config, config)
    if path.is_file():
        return path
    datasets = source_datasets(config)
    chunks = memory_chunks(path, config, datasets)
    missing = [chunk for chunk in chunks[rank::world_size] if not chunk.file.is_file()]
    if missing:
        backbone = loaded or load_backbone(backbone_config)
        if device is not None and loaded is None:
            backbone.model.to(device)
        layers = backbone.last_layers(config.edited_layers)
        label = f"mining the knowledge memory ({len(missing)} of {len(chunks)} chunks here)"
        lines_every = max(1, len(missing) // 10) if rank == 0 and piped() else 0  # no bar in a file
        started = time.monotonic()
        with Progress(disable=rank != 0 or bool(lines_every)) as progress:
            task = progress.add_task(label, total=len(missing))
            for done, chunk in enumerate(missing, start=1):
                dataset = datasets[chunk.source]
                samples = [dataset[i] for i in range(chunk.start, chunk.stop)]
                file = config.sources[chunk.source].file
                mine_memory(backbone, layers, samples, file, config.max_new_tokens).save(chunk.file)
                progress.advance(task)
                if lines_every and (done % lines_every == 0 or done == len(missing)):
                    print(progress_line(label, done, len(missing), started), flush=True)
    barrier()
    if rank == 0:
        memory = KnowledgeMemory.concatenate([KnowledgeMemory.load(chunk.file) for chunk in chunks])
        if len(memory) > 0:
            memory.save(path)
    barrier()
    if not path.is_file():
        files = ", ".join(source.file for source in config.sources)
        raise UserError(f"the model answers every training question right: no triplets in {files}")
    return path


def load_memory(backbone: BackboneConfig, config: MemoryConfig) -> KnowledgeMemory:
    """The cached memory of this backbone and config; it must have been built (by `fit`) before."""
    return KnowledgeMemory.load(memory_path(backbone, config))


def run_memory(
    trainer: Any, backbone_config: BackboneConfig, backbone: Backbone, config: MemoryConfig
) -> KnowledgeMemory:
    """The memory of a run's (loaded) backbone, built first where it is missing, each process of
    `trainer` mining its share: a method that needs only the memory (T-Patcher) needs no `fit` first."""
    strategy = trainer.strategy
    rank, processes = trainer.global_rank, trainer.world_size
    path = build_memory(
        backbone_config, config, rank, processes, strategy.root_device, strategy.barrier, loaded=backbone
    )
    return KnowledgeMemory.load(path)
