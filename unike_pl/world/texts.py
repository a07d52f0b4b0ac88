"""Every string a model of the world reads or writes, for training a tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from unike_pl.mmedit_fields import TEXT_FIELDS
from unike_pl.world.manifest import FILES, load_manifest


def iter_world_texts(root: str | Path) -> Iterator[str]:
    """Yield every prompt, question and answer of the world at `root`, repeats included (in file order).

    Repeats are kept so that frequency-based tokenizer trainers see the world's real word frequencies.
    Raises WorldError if `root` holds no complete world.
    """
    root = Path(root)
    load_manifest(root)
    for name, relative in FILES.items():
        path = root / relative
        items = json.loads(path.read_text(encoding="utf-8"))
        if name.startswith("pretrain"):
            for example in items:
                yield example["question"]
                yield example["answer"]
            continue
        for record in items:
            for field in TEXT_FIELDS:
                yield record[field]
            for pair in record["related"]:
                yield pair["q"]
                yield pair["a"]
            for pair in record["hard_loc"]:
                yield pair["q"]
                yield pair["a"]
