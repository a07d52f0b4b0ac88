"""A stable hash of "which model" for cache keys, computed without loading the weights."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from unike_pl.backbones.loader import BackboneConfig, ensure_available

CHUNK = 1 << 20


def backbone_fingerprint(config: BackboneConfig) -> str:
    """A local folder hashes the bytes of every file in it (weights included); a hub id hashes the id
    and dtype (pin a revision by downloading it to a folder when caches must follow weight updates).

    A folder is read once per process while its files keep their sizes and modification times: the
    weights of a large model take minutes to hash.
    """
    ensure_available(config)
    settings = f"dtype={config.dtype};format={config.prompt_format}"
    folder = Path(config.name_or_path)
    if not folder.is_dir():
        return hashlib.sha256((settings + config.name_or_path).encode()).hexdigest()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    signature = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(str(folder.resolve()), settings, signature)


@functools.lru_cache(maxsize=16)
def _folder_digest(folder: str, settings: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(settings.encode())
    for name, _, _ in signature:
        digest.update(name.encode())
        with (Path(folder) / name).open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()
