"""Random streams keyed by (seed, split, index, purpose).

Every scene, rendering and text choice draws from its own stream, so an item's content does not depend on
which items were generated before it, in which order, or in which worker process.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

# Stable numeric ids: changing one changes every world generated with it (bump GENERATOR_VERSION then).
SPLIT_IDS: dict[str, int] = {
    "pretrain_train": 0,
    "pretrain_val": 1,
    "vqa_train": 2,
    "vqa_eval": 3,
    "caption_train": 4,
    "caption_eval": 5,
    "entities": 9,
}


class Stream(IntEnum):
    """What a stream is used for, within one item."""

    SCENE = 0
    RENDER = 1
    RENDER_REPHRASE = 2
    LOCALITY_SCENE = 3
    LOCALITY_RENDER = 4
    SIMILAR_RENDER = 5
    TEXT = 6
    RULE = 7
    TEXT_LOCALITY = 8
    CONTEXT = 9
    TEXT_CONTEXT = 10


def stream(seed: int, split: str, index: int, purpose: Stream) -> np.random.Generator:
    """The generator for one purpose of one item of one split."""
    if split not in SPLIT_IDS:
        raise KeyError(f"unknown split {split!r}; known: {sorted(SPLIT_IDS)}")
    return np.random.default_rng([int(seed), SPLIT_IDS[split], int(index), int(purpose)])
