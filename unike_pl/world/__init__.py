"""The embedded default world: a seeded synthetic multimodal world written in MMEdit's file format.

Scenes of simple coloured objects are rendered to small pictures; questions, captions and text-only facts
about them make a pretraining corpus whose labels follow a few systematic confusion rules, and MMEdit-style
edit records (plus LDKE's related and hard-locality questions) ask to fix those confusions.
"""

from unike_pl.world.generate import SCALES, Scale, generate_world, world_status
from unike_pl.world.manifest import GENERATOR_VERSION, WorldError, load_manifest
from unike_pl.world.texts import iter_world_texts

__all__ = [
    "GENERATOR_VERSION",
    "SCALES",
    "Scale",
    "WorldError",
    "generate_world",
    "iter_world_texts",
    "load_manifest",
    "world_status",
]
