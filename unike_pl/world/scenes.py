"""Scenes of the synthetic world: a group of identical objects, and optionally a companion beside it.

The group is described by a few discrete attributes. The companion is one object of another shape, drawn
as a neutral outline (never coloured, textured or counted among "the objects"); `relation` says on which
side of the group it lies, the one relation between two objects that questions ask about.

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

NONE = "none"
COMPANIONS: tuple[str, ...] = (NONE, *SHAPES)
# Where the companion is, relative to the group ("none" without companion).
RELATIONS: tuple[str, ...] = (NONE, "left", "right", "above", "below")
# A group on one side leaves room for the companion on the opposite side only; a centred group leaves a
# margin on every side. So the relation always fits the picture and never contradicts the position.
RELATIONS_BY_POSITION: dict[str, tuple[str, ...]] = {
    "left": ("right",),
    "right": ("left",),
    "top": ("below",),
    "bottom": ("above",),
    "center": ("left", "right", "above", "below"),
}
# Share of scenes that have a companion.
COMPANION_RATE = 0.5

# Attributes that questions ask about; `tone` and `companion` are scene content but never asked on their
# own (the companion's shape is named in the relation question). `relation` is asked only with a companion.
ASKED_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "count", "position", "size", "texture", "relation")
# What the auxiliary heads of the pretraining predict from the picture: every asked attribute and the
# companion's shape.
HEAD_ATTRIBUTES: tuple[str, ...] = (*ASKED_ATTRIBUTES, "companion")

VOCABULARY: dict[str, tuple[Any, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "count": COUNTS,
    "position": POSITIONS,
    "size": SIZES,
    "texture": TEXTURES,
    "tone": TONES,
    "companion": COMPANIONS,
    "relation": RELATIONS,
}


@dataclass(frozen=True)
class Scene:
    """What is in a picture: `count` identical objects of one shape, colour, size and texture, and
    optionally a companion of another shape on one side of them."""

    shape: str
    colour: str
    count: int
    position: str
    size: str
    texture: str
    tone: str
    companion: str = NONE
    relation: str = NONE

    def __post_init__(self) -> None:
        for name, allowed in VOCABULARY.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"scene attribute {name}={value!r} is not one of {allowed}")
        if self.count > MAX_COUNT[self.size]:
            raise ValueError(
                f"{self.size} objects come at most {MAX_COUNT[self.size]} at a time, not {self.count}"
            )
        if (self.companion == NONE) != (self.relation == NONE):
            raise ValueError(
                f"a companion needs a relation and a relation a companion, not "
                f"companion={self.companion!r}, relation={self.relation!r}"
            )
        if self.companion == self.shape:
            raise ValueError(f"the companion must have another shape than the {self.shape} group")
        if self.companion != NONE and self.relation not in RELATIONS_BY_POSITION[self.position]:
            raise ValueError(
                f"a companion {self.relation} of a group at {self.position} does not fit the picture; "
                f"allowed: {RELATIONS_BY_POSITION[self.position]}"
            )

    @property
    def plural(self) -> bool:
        return self.count > 1

    @property
    def has_companion(self) -> bool:
        return self.companion != NONE

    def asked_attributes(self) -> tuple[str, ...]:
        """The attributes a question may ask about this scene (the relation only with a companion)."""
        return tuple(a for a in ASKED_ATTRIBUTES if a != "relation" or self.has_companion)

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
    """One scene, every attribute uniform; the count is uniform over what the size class allows; half of
    the scenes have a companion, of a uniform other shape on a uniform side that fits the position."""

    def pick(values: tuple[Any, ...]) -> Any:
        return values[int(rng.integers(len(values)))]

    size, shape, position = pick(SIZES), pick(SHAPES), pick(POSITIONS)
    companion, relation = NONE, NONE
    if rng.random() < COMPANION_RATE:
        companion = pick(tuple(s for s in SHAPES if s != shape))
        relation = pick(RELATIONS_BY_POSITION[position])
    return Scene(
        shape=shape,
        colour=pick(COLOURS),
        count=int(rng.integers(1, MAX_COUNT[size] + 1)),
        position=position,
        size=size,
        texture=pick(TEXTURES),
        tone=pick(TONES),
        companion=companion,
        relation=relation,
    )
