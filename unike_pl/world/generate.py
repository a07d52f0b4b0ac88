"""Writing a whole world: edit splits, pretraining corpus, images and the manifest, atomically.

Everything is written into a hidden sibling folder which is renamed onto `root` at the end, so `root` is
either absent, the previous world, or the complete new one, never half a world.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from unike_pl.factual import questions_digest, read_questions
from unike_pl.io import atomic_write_json
from unike_pl.world import language
from unike_pl.world.confusions import GROUPS, RULES
from unike_pl.world.context import IMAGE_ROOT, REPHRASE_IMAGE_ROOT, ImageFile, WorldContext
from unike_pl.world.entities import make_facts
from unike_pl.world.incontext import CONTEXT_KINDS
from unike_pl.world.leakage import check_leakage
from unike_pl.world.manifest import (
    FILES,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    WorldError,
    identity,
    load_manifest,
)
from unike_pl.world.pretrain import build_pretrain_scene, text_examples
from unike_pl.world.records import build_edit_record
from unike_pl.world.scenes import ASKED_ATTRIBUTES, VOCABULARY

logger = logging.getLogger(__name__)

Status = Literal["missing", "up_to_date", "different", "not_a_world"]


@dataclass(frozen=True)
class Scale:
    """How much of the world to generate."""

    pretrain_train: int
    """pretraining scenes (one image, `questions_per_scene` questions each) in pretrain_train.json"""
    pretrain_val: int
    """pretraining scenes in pretrain_val.json"""
    vqa_train: int
    """records of vqa/vqa_train.json"""
    vqa_eval: int
    """records of vqa/vqa_eval.json"""
    caption_train: int
    """records of caption/caption_train_edit.json"""
    caption_eval: int
    """records of caption/caption_eval_edit.json"""
    countries: int
    """fictional countries; each brings a capital, a founder and a river: 4 entities, 11 facts"""
    questions_per_scene: int = 4
    """questions asked about each pretraining scene"""
    confused_scene_rate: float = 0.3
    """share of pretraining scenes drawn from a confusion rule's sub-population"""
    context_examples_per_scene: int = 1
    """context-reading examples (IKE's format) per pretraining scene, besides its questions"""
    max_demonstrations: int = 3
    """most demonstrations before a context example's new fact (3 fit 256 positions with captions)"""


SCALES: dict[str, Scale] = {
    "default": Scale(
        pretrain_train=6000,
        pretrain_val=400,
        vqa_train=1000,
        vqa_eval=300,
        caption_train=300,
        caption_eval=100,
        countries=50,
    ),
    "small": Scale(
        pretrain_train=48,
        pretrain_val=16,
        vqa_train=30,
        vqa_eval=15,
        caption_train=15,
        caption_eval=10,
        countries=8,
        max_demonstrations=1,
    ),
}
# (split, task) of the edit files, in the order they are generated.
EDIT_SPLITS: tuple[tuple[str, str], ...] = (
    ("vqa_train", "vqa"),
    ("vqa_eval", "vqa"),
    ("caption_train", "caption"),
    ("caption_eval", "caption"),
)
PRETRAIN_SPLITS: tuple[str, ...] = ("pretrain_train", "pretrain_val")


def world_status(
    root: str | Path,
    seed: int = 0,
    scale: str = "default",
    image_size: int = 64,
    text_locality: str | Path | None = None,
) -> Status:
    """Whether `root` holds no world, exactly this world, another world, or something that is no world."""
    root = Path(root)
    if not (root / MANIFEST_NAME).exists():
        return "not_a_world" if root.exists() and any(root.iterdir()) else "missing"
    try:
        manifest = load_manifest(root)
    except WorldError:
        return "not_a_world"
    return (
        "up_to_date" if identity(manifest) == _wanted(seed, scale, image_size, text_locality) else "different"
    )


def _wanted(seed: int, scale: str, image_size: int, text_locality: str | Path | None) -> dict[str, Any]:
    digest = questions_digest(read_questions(text_locality)) if text_locality is not None else None
    return {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "image_size": image_size,
        "text_locality": digest,
    }


def generate_world(
    root: str | Path,
    seed: int = 0,
    scale: str = "default",
    image_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    text_locality: str | Path | None = None,
) -> dict[str, Any]:
    """Generate the synthetic world under `root` and return its manifest.

    A world already there with the same version, seed, scale and image size is left as it is (unless
    `overwrite`); any other content of `root` is an error unless `overwrite`. `workers` processes render
    in parallel (default: all cores for large worlds); the files do not depend on it. `text_locality`, a
    JSON Lines file of real `loc` / `loc_ans` pairs (`unike_pl.factual`), replaces the fictional facts as
    the edit records' text-locality questions; everything else is the same as without it.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, not {image_size}")
    root = Path(root)
    status = world_status(root, seed, scale, image_size, text_locality)
    if status == "up_to_date" and not overwrite:
        logger.info(
            "world at %s is up to date (version %s, seed %d, scale %s)", root, GENERATOR_VERSION, seed, scale
        )
        return load_manifest(root)
    if status == "different" and not overwrite:
        found = identity(load_manifest(root))
        raise WorldError(
            f"{root / MANIFEST_NAME} describes another world {found}, not "
            f"{_wanted(seed, scale, image_size, text_locality)}; "
            "pass overwrite=True (--overwrite) to replace it"
        )
    if status == "not_a_world" and not overwrite:
        raise WorldError(
            f"{root} is not empty and holds no world manifest ({MANIFEST_NAME}); "
            "pass overwrite=True (--overwrite) to replace its content"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(root)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _write_world(staging, seed, scale, image_size, workers, text_locality)
        _replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders of generations whose process is gone (killed before it could clean up)."""
    for folder in root.parent.glob(f".{root.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue  # alive, owned by someone else


def _replace(staging: Path, root: Path) -> None:
    """Put `staging` where `root` is, removing the old content only once the new world is in place."""
    if not root.exists():
        staging.rename(root)
        return
    retired = root.parent / f".{root.name}.old-{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    root.rename(retired)
    staging.rename(root)
    shutil.rmtree(retired, ignore_errors=True)


class _ImageWriter:
    """Writes rendered images under the staging folder and counts them per image root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.counts: Counter[str] = Counter()
        self._folders: set[Path] = set()

    def write(self, images: Iterable[ImageFile]) -> None:
        for relative, data in images:
            path = self.base / relative
            if path.parent not in self._folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._folders.add(path.parent)
            path.write_bytes(data)
            self.counts[relative.split("/", 1)[0]] += 1


def _mapper(
    workers: int,
) -> tuple[Callable[[Callable[[int], Any], range], Iterator[Any]], ProcessPoolExecutor | None]:
    if workers <= 1:
        return (lambda fn, items: map(fn, items)), None
    # Spawned, not forked: the caller may hold threads (torch, a dataloader) that a fork would copy mid-lock.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return (lambda fn, items: pool.map(fn, items, chunksize=16)), pool


def _write_world(
    base: Path,
    seed: int,
    scale_name: str,
    image_size: int,
    workers: int | None,
    text_locality: str | Path | None,
) -> dict[str, Any]:
    scale = SCALES[scale_name]
    facts = tuple(make_facts(seed, scale.countries))
    questions = read_questions(text_locality) if text_locality is not None else []
    context = WorldContext(
        seed=seed,
        image_size=image_size,
        facts=facts,
        confused_scene_rate=scale.confused_scene_rate,
        questions_per_scene=scale.questions_per_scene,
        context_examples_per_scene=scale.context_examples_per_scene,
        max_demonstrations=scale.max_demonstrations,
        text_locality=tuple((q["loc"], q["loc_ans"]) for q in questions),
    )
    n_items = sum(getattr(scale, split) for split in PRETRAIN_SPLITS) + sum(
        getattr(scale, s) for s, _ in EDIT_SPLITS
    )
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n_items > 500 else 1
    base.mkdir(parents=True)
    writer = _ImageWriter(base)
    splits: dict[str, dict[str, Any]] = {}
    run, pool = _mapper(workers)
    try:
        for split, task in EDIT_SPLITS:
            records = []
            for record, images in run(
                partial(build_edit_record, context, task, split), range(getattr(scale, split))
            ):
                records.append(record)
                writer.write(images)
            atomic_write_json(base / FILES[split], records)
            splits[split] = {
                "records": len(records),
                "task": task,
                "per_group": dict(sorted(Counter(record["group"] for record in records).items())),
                "per_rule": dict(Counter(record["rule"] for record in records)),
            }
        for split in PRETRAIN_SPLITS:
            examples = []
            for scene_examples, images in run(
                partial(build_pretrain_scene, context, split), range(getattr(scale, split))
            ):
                examples.extend(scene_examples)
                writer.write(images)
            image_examples = len(examples)
            confused = sum(example["rule"] is not None for example in examples)
            context_examples = sum(example["kind"] in CONTEXT_KINDS for example in examples)
            examples.extend(text_examples(context, split))
            atomic_write_json(base / FILES[split], examples)
            splits[split] = {
                "scenes": getattr(scale, split),
                "examples": len(examples),
                "image_examples": image_examples,
                "text_examples": len(examples) - image_examples,
                "confused_examples": confused,
                "confused_fraction": round(confused / max(1, image_examples), 4),
                "context_examples": context_examples,
                "context_fraction": round(context_examples / max(1, image_examples), 4),
                "per_kind": dict(sorted(Counter(example["kind"] for example in examples).items())),
                "per_rule": dict(sorted(Counter(e["rule"] for e in examples if e["rule"]).items())),
            }
    finally:
        if pool is not None:
            pool.shutdown()

    manifest = {
        "generator": "unike_pl.world",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale_name,
        "image_size": image_size,
        "image_root": IMAGE_ROOT,
        "rephrase_image_root": REPHRASE_IMAGE_ROOT,
        "scale_settings": asdict(scale),
        "files": {
            name: {"path": path, "sha256": hashlib.sha256((base / path).read_bytes()).hexdigest()}
            for name, path in FILES.items()
        },
        "splits": splits,
        "vocabulary": {name: list(values) for name, values in VOCABULARY.items()},
        "question_types": list(ASKED_ATTRIBUTES),
        "question_templates": {
            name: list(templates) for name, templates in language.QUESTION_TEMPLATES.items()
        },
        "caption_prompts": list(language.CAPTION_PROMPTS),
        "confusion_rules": [rule.to_dict() for rule in RULES],
        "rule_groups": {group: [r.name for r in RULES if r.group == group] for group in GROUPS},
        "leakage": check_leakage(base),
        "counts": {
            "images": writer.counts[IMAGE_ROOT],
            "rephrase_images": writer.counts[REPHRASE_IMAGE_ROOT],
            "entities": len({fact.entity for fact in facts}),
            "facts": len(facts),
        },
    }
    if questions:
        # Only worlds with real text-locality questions carry these entries (other manifests are unchanged).
        manifest["text_locality"] = questions_digest(questions)
        manifest["text_locality_file"] = str(text_locality)
        manifest["text_locality_questions"] = len(questions)
    # Written last: a folder without it is an incomplete world.
    atomic_write_json(base / MANIFEST_NAME, manifest)
    return manifest
