"""The untrained embedded model: a tokenizer learnt from the world's text and a small BLIP-2 OPT."""

from __future__ import annotations

from pathlib import Path

import torch

from unike_pl.backbones.factory import ModelSize, build_blip2, save_backbone, train_tokenizer
from unike_pl.io import atomic_directory
from unike_pl.world import iter_world_texts


def init_world_model(
    world_root: str | Path, out_dir: str | Path, size: ModelSize, vocab_size: int, seed: int
) -> Path:
    """Write a randomly initialised BLIP-2 (OPT language model) and its processor to `out_dir`.

    Deterministic for a given world, size, vocabulary size and seed; written atomically (a folder is
    complete or absent).
    """
    tokenizer = train_tokenizer(iter_world_texts(world_root), vocab_size=vocab_size)
    torch.manual_seed(seed)
    model, processor = build_blip2(tokenizer, size, language="opt")
    with atomic_directory(out_dir) as staging:
        save_backbone(model, processor, staging)
    return out_dir
