"""The world manifest (`world.json`): written last, so its presence marks a complete world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unike_pl.errors import UserError

MANIFEST_NAME = "world.json"
# Bump whenever the same seed would produce different files (templates, rules, rendering, stream ids...).
GENERATOR_VERSION = "2.0.0"
# A world is "the same" as a request when these manifest entries agree.
IDENTITY_KEYS: tuple[str, ...] = ("version", "seed", "scale", "image_size")
# Identity entries that only some worlds have (absent = None): the digest of the text-locality questions.
OPTIONAL_IDENTITY_KEYS: tuple[str, ...] = ("text_locality",)

FILES: dict[str, str] = {
    "vqa_train": "vqa/vqa_train.json",
    "vqa_eval": "vqa/vqa_eval.json",
    "caption_train": "caption/caption_train_edit.json",
    "caption_eval": "caption/caption_eval_edit.json",
    "pretrain_train": "pretrain/pretrain_train.json",
    "pretrain_val": "pretrain/pretrain_val.json",
}


class WorldError(UserError):
    """A world folder is missing, incomplete or not the one asked for."""


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: manifest.get(key) for key in IDENTITY_KEYS + OPTIONAL_IDENTITY_KEYS}


def load_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the world at `root`; WorldError if there is none (no world, or a partial one)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise WorldError(
            f"{path} does not exist: {root} holds no complete world (generate it with "
            f"`python -m unike_pl.world --root {root}`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise WorldError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or any(key not in manifest for key in IDENTITY_KEYS):
        raise WorldError(f"{path} is not a world manifest: it lacks one of {IDENTITY_KEYS}")
    return manifest
