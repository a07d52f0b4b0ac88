"""Scenes of the synthetic world: a group of identical objects described by a few discrete attributes.

A scene is pure content (what a caption would say); how it looks in one picture (offsets, exact hue,
noise, background grey) is decided at rendering time, so two renderings of one scene share every answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
# Blue/purple and red/orange/pink are deliberately close in hue: they are where confusions are plausible.
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
SIZES: tuple[str, ...] = ("small", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
# The background tone is part of the scene (not of the rendering) because a confusion rule depends on it:
# a rephrased image must stay inside the same sub-population as the original.
TONES: tuple[str, ...] = ("light", "dark")
# Large objects crowd their region, so fewer of them fit without overlapping.
MAX_COUNT: dict[str, int] = {"small": 4, "large": 3}
COUNTS: tuple[int, ...] = tuple(range(1, max(MAX_COUNT.values()) + 1))

# Attributes that questions ask about; `tone` is scene content but never asked.
ASKED_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "count", "position", "size", "texture")

VOCABULARY: dict[str, tuple[Any, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "count": COUNTS,
    "position": POSITIONS,
    "size": SIZES,
    "texture": TEXTURES,
    "tone": TONES,
}


@dataclass(frozen=True)
class Scene:
    """What is in a picture: `count` identical objects of one shape, colour, size and texture."""

    shape: str
    colour: str
    count: int
    position: str
    size: str
    texture: str
    tone: str

    def __post_init__(self) -> None:
        for name, allowed in VOCABULARY.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"scene attribute {name}={value!r} is not one of {allowed}")
        if self.count > MAX_COUNT[self.size]:
            raise ValueError(
                f"{self.size} objects come at most {MAX_COUNT[self.size]} at a time, not {self.count}"
            )

    @property
    def plural(self) -> bool:
        return self.count > 1

    def value(self, attribute: str) -> Any:
        return getattr(self, attribute)

    def with_value(self, attribute: str, value: Any) -> Scene:
        """The same scene with one attribute changed (raises if the result is not a valid scene)."""
        return replace(self, **{attribute: value})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(**{name: data[name] for name in VOCABULARY})


def is_valid(attributes: dict[str, Any]) -> bool:
    """Whether these attribute values make a scene (the count fits the size class)."""
    try:
        Scene(**attributes)
    except (TypeError, ValueError):
        return False
    return True


def sample_scene(rng: np.random.Generator) -> Scene:
    """One scene, every attribute uniform; the count is uniform over what the size class allows."""

    def pick(values: tuple[Any, ...]) -> Any:
        return values[int(rng.integers(len(values)))]

    size = pick(SIZES)
    return Scene(
        shape=pick(SHAPES),
        colour=pick(COLOURS),
        count=int(rng.integers(1, MAX_COUNT[size] + 1)),
        position=pick(POSITIONS),
        size=size,
        texture=pick(TEXTURES),
        tone=pick(TONES),
    )
