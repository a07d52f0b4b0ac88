"""The embedded default world: a seeded synthetic multimodal world written in MMEdit's file format.

Scenes of simple coloured objects (and, in half of them, a neutral companion beside the group) are
rendered to small pictures; questions, captions, context-reading examples in IKE's format and text-only
facts about them make a pretraining corpus whose labels follow systematic confusion rules, and MMEdit-style
edit records (plus LDKE's related and hard-locality questions) ask to fix those confusions. Rules come in
two groups: seen rules have training edit records, unseen rules only eval ones (`leakage` checks it).
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
