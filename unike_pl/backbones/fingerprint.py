"""A stable hash of "which model" for cache keys, computed without loading the weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

from unike_pl.backbones.loader import BackboneConfig, ensure_available
from unike_pl.data.fingerprint import file_digest


def backbone_fingerprint(config: BackboneConfig) -> str:
    """A local folder hashes the bytes of every file in it (weights included); a hub id hashes the id
    and dtype (pin a revision by downloading it to a folder when caches must follow weight updates).

    A file is read once per process while it keeps its size and modification time: the weights of a
    large model take minutes to hash.
    """
    ensure_available(config)
    digest = hashlib.sha256(f"dtype={config.dtype};format={config.prompt_format}".encode())
    folder = Path(config.name_or_path)
    if not folder.is_dir():
        digest.update(config.name_or_path.encode())
        return digest.hexdigest()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder)}={file_digest(file)};".encode())
    return digest.hexdigest()
