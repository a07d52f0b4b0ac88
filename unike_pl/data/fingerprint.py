"""What the scores of a split depend on, as hashes: the bytes of its file and of every image it names.

Image hashes are kept per process while a file keeps its size and modification time, so a split is read
once however many caches and result folders ask for it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from unike_pl.data.mmedit import MMEditSplit

BLOCK = 1 << 20


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    path = Path(path)
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _digest(path: str, size: int, modified: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def split_images(split: MMEditSplit) -> list[tuple[str, Path]]:
    """(record and field, image path) of every image the split's records name, in record order."""
    images = []
    for record in split.records:
        for field in ("image", "image_rephrase", "m_loc"):
            images.append((f"{record.index}.{field}", getattr(record, field)))
        for position, case in enumerate(record.hard_loc):
            images.append((f"{record.index}.hard_loc.{position}", case.image))
    return images


def split_fingerprint(split: MMEditSplit) -> dict[str, str | int]:
    """The sha256 of the split's file, and one over the contents of its images with the record and field
    each serves (the same bytes under another root give the same hash; other bytes do not)."""
    images = split_images(split)
    digest = hashlib.sha256()
    for role, path in images:
        digest.update(f"{role}={file_digest(path)};".encode())
    return {"file": file_digest(split.file), "images": digest.hexdigest(), "image_count": len(images)}
