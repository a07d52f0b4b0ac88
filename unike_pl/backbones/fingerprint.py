"""A stable hash of "which model" for cache keys, computed without loading the weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

from unike_pl.backbones.loader import BackboneConfig

CHUNK = 1 << 20


def backbone_fingerprint(config: BackboneConfig) -> str:
    """A local folder hashes the bytes of every file in it (weights included); a hub id hashes the id
    and dtype (pin a revision by downloading it to a folder when caches must follow weight updates)."""
    digest = hashlib.sha256(f"dtype={config.dtype};format={config.prompt_format}".encode())
    folder = Path(config.name_or_path)
    if not folder.is_dir():
        digest.update(config.name_or_path.encode())
        return digest.hexdigest()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        with file.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()
