"""Building the knowledge memory's cache: chunks that resume, shared between processes chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.knowledge.cache import MemoryConfig, MemorySource, build_memory, memory_path
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory


def memory_config(world: Path, cache: Path, chunk_records: int = 4) -> MemoryConfig:
    images, rephrased = str(world / "images"), str(world / "images_rephrase")
    return MemoryConfig(
        sources=[
            MemorySource(str(world / "vqa" / "vqa_train.json"), images, rephrased, "vqa"),
            MemorySource(str(world / "caption" / "caption_train_edit.json"), images, rephrased, "caption"),
        ],
        cache_dir=str(cache),
        chunk_records=chunk_records,
        limit=6,
        max_new_tokens=3,
    )


def chunk_names(config: MemoryConfig, backbone: BackboneConfig) -> list[str]:
    return sorted(path.name for path in (memory_path(backbone, config).parent / "chunks").glob("*.pt"))


def assert_same_memory(first: Path, second: Path) -> None:
    one, two = KnowledgeMemory.load(first), KnowledgeMemory.load(second)
    assert len(one) > 4 and one.triplets == two.triplets
    for layer in one.layers:
        for kind in STATE_KINDS:
            assert torch.equal(one.states[layer][kind], two.states[layer][kind]), (layer, kind)


def test_a_piped_build_prints_plain_progress_lines(tmp_path, small_world, world_model, capsys):
    backbone = BackboneConfig(str(world_model), local_files_only=True)
    build_memory(backbone, memory_config(small_world, tmp_path, chunk_records=1))  # 12 chunks
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mining")]
    assert [line.split(": ")[0].rsplit(" ", 1)[1] for line in lines] == [
        "1/12",
        "2/12",
        "3/12",
        "4/12",
        "5/12",
        "6/12",
        "7/12",
        "8/12",
        "9/12",
        "10/12",
        "11/12",
        "12/12",
    ]
    assert all(line.endswith("min left") for line in lines)


def test_two_processes_each_mine_their_own_chunks_and_process_zero_joins_them(
    tmp_path, small_world, world_model
):
    """Process 1 of 2 mines chunks 1 and 3 of 4 and waits; process 0 (run here at that barrier) mines 0
    and 2 and joins all four: the memory equals one process's build."""
    backbone = BackboneConfig(str(world_model), local_files_only=True)
    single = build_memory(backbone, memory_config(small_world, tmp_path / "one"))

    shared = memory_config(small_world, tmp_path / "two")
    seen_at_barriers: list[list[str]] = []

    def barrier() -> None:  # process 1's barriers: the first is where process 0 does its part
        seen_at_barriers.append(chunk_names(shared, backbone))
        if len(seen_at_barriers) == 1:
            build_memory(backbone, shared, rank=0, world_size=2)

    double = build_memory(backbone, shared, rank=1, world_size=2, barrier=barrier)
    assert seen_at_barriers[0] == ["00_0000004_0000006.pt", "01_0000004_0000006.pt"]
    assert len(seen_at_barriers[1]) == 4
    assert_same_memory(single, double)


def test_a_build_resumed_with_other_chunks_reads_no_chunk_of_other_records(
    tmp_path, small_world, world_model
):
    """An interrupted build left 4-record chunks; resumed with 3-record chunks it mines its own (the chunk
    names hold both bounds) and gets the memory of an uninterrupted build."""
    backbone = BackboneConfig(str(world_model), local_files_only=True)
    reference = build_memory(backbone, memory_config(small_world, tmp_path / "ref", chunk_records=3))
    interrupted = memory_config(small_world, tmp_path / "cache")
    path = build_memory(backbone, interrupted)
    path.unlink()  # as if killed before the join: only the chunks are there
    resumed = memory_config(small_world, tmp_path / "cache", chunk_records=3)
    assert build_memory(backbone, resumed) == path
    assert len(chunk_names(resumed, backbone)) == 4 + 4  # 2 sources × (0–4, 4–6) and (0–3, 3–6)
    assert_same_memory(reference, path)


def test_chunk_records_must_be_positive():
    with pytest.raises(ValueError, match="memory.chunk_records = 0: must be positive"):
        MemoryConfig(sources=[], chunk_records=0)
