"""What every item builder needs to know about the world being generated (picklable for worker processes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unike_pl.world.entities import Fact
from unike_pl.world.render import png_bytes, render_scene
from unike_pl.world.scenes import Scene

# An image produced by a builder: (path relative to the world root, PNG bytes).
ImageFile = tuple[str, bytes]

IMAGE_ROOT = "images"
REPHRASE_IMAGE_ROOT = "images_rephrase"


@dataclass(frozen=True)
class WorldContext:
    seed: int
    image_size: int
    facts: tuple[Fact, ...]
    # Share of pretraining scenes drawn from a confusion rule's sub-population.
    confused_scene_rate: float
    questions_per_scene: int
    # Context-reading examples (IKE's format) per pretraining scene.
    context_examples_per_scene: int
    # Most demonstrations written before a context example's new fact.
    max_demonstrations: int
    # (question, answer) pairs that replace the fictional facts as the edit records' text locality.
    text_locality: tuple[tuple[str, str], ...] = ()

    def draw(self, scene: Scene, rng: np.random.Generator, root: str, relative: str) -> ImageFile:
        """Render `scene` to the file `relative` under the image root `root`."""
        pixels = render_scene(scene, rng, self.image_size).pixels
        return f"{root}/{relative}", png_bytes(pixels)
