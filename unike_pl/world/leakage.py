"""How much of each eval split the training splits already give away, per group of eval edits.

For every eval record it checks four routes by which an answer could come from training rather than from
the edit: its rule has training records (the knowledge memory and the IKE demonstrations are built from
those), its (question, target) pair (src/alt or rephrase/alt) is one of a training record's, its scene is
a training record's scene, or one of its images has the bytes of a training image. The training splits are
the training edit splits (vqa_train, caption_train); the image check also covers every pretraining image.
Unseen-rule edits must score zero on every route; seen-rule edits are expected to overlap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unike_pl.world.confusions import GROUPS, UNSEEN
from unike_pl.world.context import IMAGE_ROOT, REPHRASE_IMAGE_ROOT
from unike_pl.world.manifest import FILES

TRAINING_EDIT_SPLITS: tuple[str, ...] = ("vqa_train", "caption_train")
EVAL_SPLITS: tuple[str, ...] = ("vqa_eval", "caption_eval")
PRETRAIN_SPLITS: tuple[str, ...] = ("pretrain_train", "pretrain_val")
ROUTES: tuple[str, ...] = ("rule_trained", "question_target", "scene", "image_bytes")
ROUTE_LABELS: dict[str, str] = {
    "rule_trained": "rule has training records",
    "question_target": "(question, target) pair in training",
    "scene": "scene in training",
    "image_bytes": "image bytes equal a training image",
}


def _load(root: Path, split: str) -> list[dict[str, Any]]:
    path = root / FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} holds no complete world")
    return json.loads(path.read_text(encoding="utf-8"))


def _pairs(record: dict[str, Any]) -> set[tuple[str, str]]:
    return {(record["src"], record["alt"]), (record["rephrase"], record["alt"])}


def _scene_key(record: dict[str, Any]) -> str:
    return json.dumps(record["scene"], sort_keys=True)


def _image_files(root: Path, record: dict[str, Any]) -> Iterator[Path]:
    """Every picture an edit record shows: the edit, its rephrase, the locality and hard-locality images."""
    yield root / IMAGE_ROOT / record["image"]
    yield root / REPHRASE_IMAGE_ROOT / record["image_rephrase"]
    yield root / IMAGE_ROOT / record["m_loc"]
    for item in record.get("hard_loc", []):
        yield root / IMAGE_ROOT / item["image"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_leakage(root: str | Path) -> dict[str, dict[str, dict[str, int]]]:
    """{eval split: {group: {"records": n, route: records that leak by it}}} for the world at `root`."""
    root = Path(root)
    training = [record for split in TRAINING_EDIT_SPLITS for record in _load(root, split)]
    rules = {record["rule"] for record in training}
    pairs = set().union(*(_pairs(record) for record in training))
    scenes = {_scene_key(record) for record in training}
    images = {_digest(path) for record in training for path in _image_files(root, record)}
    for split in PRETRAIN_SPLITS:
        pictures = {example["image"] for example in _load(root, split) if example["image"] is not None}
        images |= {_digest(root / IMAGE_ROOT / picture) for picture in pictures}

    report: dict[str, dict[str, dict[str, int]]] = {}
    for split in EVAL_SPLITS:
        counts = {group: {"records": 0, **dict.fromkeys(ROUTES, 0)} for group in GROUPS}
        for index, record in enumerate(_load(root, split)):
            if record.get("group") not in GROUPS:
                raise ValueError(
                    f"{root / FILES[split]}, record {index}, field 'group': {record.get('group')!r}"
                )
            leaks = {
                "rule_trained": record["rule"] in rules,
                "question_target": bool(_pairs(record) & pairs),
                "scene": _scene_key(record) in scenes,
                "image_bytes": any(_digest(path) in images for path in _image_files(root, record)),
            }
            group = counts[record["group"]]
            group["records"] += 1
            for route, leaked in leaks.items():
                group[route] += int(leaked)
        report[split] = counts
    return report


def unseen_leaks(report: dict[str, dict[str, dict[str, int]]]) -> int:
    """Unseen-rule eval records summed over every route (zero for an honest world)."""
    return sum(report[split][UNSEEN][route] for split in report for route in ROUTES)


def format_report(report: dict[str, dict[str, dict[str, int]]]) -> str:
    lines = []
    for split, groups in report.items():
        for group, counts in groups.items():
            routes = ", ".join(f"{ROUTE_LABELS[route]} {counts[route]}" for route in ROUTES)
            lines.append(f"{split} {group}: {counts['records']} records; {routes}")
    return "\n".join(lines)
