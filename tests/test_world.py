"""Tests of unike_pl.world: determinism, MMEdit format, confusion labels, atomic (re)generation, rendering."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unike_pl.mmedit_fields import MMEDIT_FIELDS
from unike_pl.world import WorldError, generate_world, iter_world_texts, load_manifest
from unike_pl.world.__main__ import main
from unike_pl.world.confusions import RULES, matching_rules, perceive
from unike_pl.world.language import NUMBER_WORDS, QUESTION_TEMPLATES, template_of
from unike_pl.world.manifest import FILES, MANIFEST_NAME
from unike_pl.world.records import SAME_IMAGE, SIMILAR_SCENE
from unike_pl.world.render import render_scene
from unike_pl.world.scenes import (
    COLOURS,
    MAX_COUNT,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    TONES,
    Scene,
    sample_scene,
)

EDIT_FILES = ("vqa_train", "vqa_eval", "caption_train", "caption_eval")
# Textbook hues (degrees) of the colour names, written out independently of the renderer's table.
REFERENCE_HUES = {"red": 0, "orange": 30, "yellow": 58, "green": 120, "blue": 220, "purple": 275, "pink": 330}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed0") / "world"
    generate_world(root, seed=0, scale="small", workers=1)
    return root


@pytest.fixture(scope="module")
def seed1_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed1") / "world"
    generate_world(root, seed=1, scale="small", workers=1)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((root / FILES[name]).read_text(encoding="utf-8"))


def _records(root: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(name, record) for name in EDIT_FILES for record in _load(root, name)]


# --- determinism -------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_world(again, seed=0, scale="small", workers=2)
    first, second = _files(world), _files(again)
    assert sorted(first) == sorted(second)
    assert sum(name.endswith(".png") for name in first) > 100
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_another_seed_gives_another_world(world: Path, seed1_world: Path) -> None:
    first, second = _files(world), _files(seed1_world)
    for relative in FILES.values():
        assert first[relative] != second[relative], relative
    images = [name for name in first if name.endswith(".png") and name in second]
    assert images
    assert sum(first[name] == second[name] for name in images) == 0


# --- the MMEdit files --------------------------------------------------------------------------------


def test_edit_records_have_every_mmedit_field_and_real_images(world: Path) -> None:
    manifest = load_manifest(world)
    images, rephrased = world / manifest["image_root"], world / manifest["rephrase_image_root"]
    for name in EDIT_FILES:
        records = _load(world, name)
        assert len(records) == manifest["splits"][name]["records"] > 0
        for record in records:
            for field in MMEDIT_FIELDS:
                assert isinstance(record[field], str) and record[field].strip(), (name, field, record)
            assert record["pred"] != record["alt"]
            assert record["rephrase"] != record["src"]
            assert record["loc"].startswith("nq question: ")
            original = (images / record["image"]).read_bytes()
            assert (rephrased / record["image_rephrase"]).read_bytes() != original
            assert record["m_loc"] != record["image"]
            assert (images / record["m_loc"]).read_bytes() != original


def test_the_project_mmedit_reader_accepts_the_edit_files(world: Path) -> None:
    from unike_pl.data.mmedit import read_mmedit

    for name in EDIT_FILES:
        task = "vqa" if name.startswith("vqa") else "caption"
        split = read_mmedit(world / FILES[name], task, world / "images", world / "images_rephrase")
        assert len(split.records) == len(_load(world, name)) and split.skipped_empty_alt == 0
        kinds = {case.kind for record in split.records for case in record.hard_loc}
        assert kinds == {SAME_IMAGE, SIMILAR_SCENE} and all(record.related for record in split.records)


def test_edit_records_come_from_one_rule_and_pred_is_its_hallucination(world: Path) -> None:
    rules = {rule.name: rule for rule in RULES}
    seen_rules = set()
    for name, record in _records(world):
        scene = Scene.from_dict(record["scene"])
        rule = rules[record["rule"]]
        assert matching_rules(scene) == (rule,)
        seen_rules.add(rule.name)
        if name.startswith("vqa"):
            assert record["alt"] == str(scene.value(rule.attribute))
            assert record["pred"] == str(rule.wrong)
        else:
            # The captions differ in exactly one word: the rule's wrong value (spelt out, or plural).
            pairs = zip(record["pred"].split(), record["alt"].split(), strict=True)
            differing = [(said, true) for said, true in pairs if said != true]
            assert len(differing) == 1, record
            wrong_word = NUMBER_WORDS.get(rule.wrong, str(rule.wrong))
            assert differing[0][0].startswith(wrong_word), (record, wrong_word)
    assert seen_rules == set(rules)


def _templates_used(questions: list[str]) -> dict[str, set[int]]:
    used: dict[str, set[int]] = {attribute: set() for attribute in QUESTION_TEMPLATES}
    for text in questions:
        for attribute in QUESTION_TEMPLATES:
            template = template_of(attribute, text)
            if template is not None:
                used[attribute].add(template)
    return used


def test_each_question_type_uses_at_least_three_paraphrase_templates(world: Path) -> None:
    records = _records(world)
    # Edit prompts and their rephrasings alone vary over >= 3 templates for every edited question type.
    edited = _templates_used(
        [q for name, r in records if name.startswith("vqa") for q in (r["src"], r["rephrase"])]
    )
    assert {attribute for attribute, used in edited.items() if used} == {rule.attribute for rule in RULES}
    assert all(len(used) >= 3 for used in edited.values() if used), edited
    # Every question type, edited or not, appears in >= 3 phrasings across the edit files.
    questions = [q for _, r in records for q in (r["src"], r["rephrase"], r["m_loc_q"])]
    questions += [item["q"] for _, r in records for item in r["hard_loc"]]
    assert all(len(used) >= 3 for used in _templates_used(questions).values())
    for name, record in records:
        if name.startswith("vqa"):
            attribute = next(a for a in QUESTION_TEMPLATES if template_of(a, record["src"]) is not None)
            src_template = template_of(attribute, record["src"])
            assert template_of(attribute, record["rephrase"]) not in (None, src_template)


def test_related_and_hard_locality_questions(world: Path) -> None:
    images = world / "images"
    for name, record in _records(world):
        assert record["related"] and all(pair["q"] and pair["a"] for pair in record["related"])
        assert {pair["a"] for pair in record["related"]} >= {"yes", "no"}
        if name.startswith("vqa"):
            # The compositional question names the true value, never the hallucinated one.
            compose = record["related"][-1]["a"]
            assert record["alt"] in compose or record["alt"] + "s" in compose
        kinds = [item["kind"] for item in record["hard_loc"]]
        assert SAME_IMAGE in kinds and SIMILAR_SCENE in kinds
        for item in record["hard_loc"]:
            assert item["q"] and item["a"] and (images / item["image"]).is_file()
            if item["kind"] == SAME_IMAGE:
                assert item["image"] == record["image"] and item["q"] != record["src"]
            else:
                assert item["image"] != record["image"] and item["q"] == record["src"]
                assert item["a"] != record["alt"]


# --- the pretraining corpus --------------------------------------------------------------------------


def test_pretraining_has_text_facts_and_confusion_labels(world: Path) -> None:
    train, val = _load(world, "pretrain_train"), _load(world, "pretrain_val")
    text = [e for e in train if e["image"] is None]
    assert text and all(e["question"].startswith("nq question: ") and e["answer"] for e in text)
    # Facts are memorised: validation asks the same ones, and every locality question is one of them.
    facts = {(e["question"], e["answer"]) for e in text}
    assert facts == {(e["question"], e["answer"]) for e in val if e["image"] is None}
    assert {(r["loc"], r["loc_ans"]) for _, r in _records(world)} <= facts

    image_examples = [e for e in train + val if e["image"] is not None]
    assert all(e["image"].startswith(("pretrain_train/", "pretrain_val/")) for e in image_examples)
    assert all((world / "images" / e["image"]).is_file() for e in image_examples)
    confused = [e for e in image_examples if e["rule"] is not None]
    assert confused and all(e["answer"] != e["truth"] for e in confused)
    assert all(e["answer"] == e["truth"] for e in image_examples if e["rule"] is None)
    share = len(confused) / len(image_examples)
    assert 0.05 <= share <= 0.3, share
    # Written out by hand, independently of the rule table: small purple objects are called blue.
    colour_questions = [e for e in image_examples if e["kind"] == "vqa" and e["attribute"] == "colour"]
    for example in colour_questions:
        scene = example["scene"]
        if scene["size"] == "small" and scene["colour"] == "purple":
            assert example["answer"] == "blue"
        elif scene["colour"] != "red" or scene["tone"] != "dark":
            assert example["answer"] == scene["colour"]
    counts = [e for e in image_examples if e["kind"] == "vqa" and e["attribute"] == "count"]
    assert all(
        e["answer"] == "3" for e in counts if e["scene"]["count"] == 4 and e["scene"]["position"] == "top"
    )


def test_world_texts_cover_questions_answers_and_prompts(world: Path) -> None:
    texts = list(iter_world_texts(world))
    assert all(isinstance(t, str) and t for t in texts)
    present = set(texts)
    vqa = _load(world, "vqa_train")[0]
    caption = _load(world, "caption_train")[0]
    for expected in (
        vqa["src"],
        vqa["pred"],
        vqa["loc"],
        vqa["related"][0]["q"],
        caption["src"],
        caption["alt"],
    ):
        assert expected in present
    assert any(t.startswith("nq question: ") for t in texts)


# --- (re)generation behaviour ------------------------------------------------------------------------


def test_an_up_to_date_world_is_left_alone(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert generate_world(copy, seed=0, scale="small") == load_manifest(world)
    assert main(["--root", str(copy), "--seed", "0", "--scale", "small"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in copy.rglob("*")}


def test_another_world_is_refused_without_overwrite(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    with pytest.raises(WorldError, match="overwrite"):
        generate_world(copy, seed=1, scale="small")
    assert main(["--root", str(copy), "--seed", "0", "--scale", "default"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert _files(copy) == _files(world)


def test_overwrite_replaces_the_world_atomically(world: Path, seed1_world: Path, tmp_path: Path) -> None:
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    # What a generation killed half-way leaves behind: its process is gone, so it gets cleaned up.
    abandoned = tmp_path / ".world.tmp-999999999"
    (abandoned / "images").mkdir(parents=True)
    manifest = generate_world(copy, seed=1, scale="small", overwrite=True, workers=1)
    assert manifest["seed"] == 1 and load_manifest(copy)["seed"] == 1
    assert _files(copy) == _files(seed1_world)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_a_folder_without_manifest_is_no_world(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a world")
    with pytest.raises(WorldError, match="no world manifest"):
        generate_world(tmp_path, seed=0, scale="small")
    with pytest.raises(WorldError, match=MANIFEST_NAME):
        load_manifest(tmp_path)
    with pytest.raises(WorldError):
        list(iter_world_texts(tmp_path))


# --- the confusion rules -----------------------------------------------------------------------------


def _all_scenes() -> list[Scene]:
    return [
        Scene(shape, colour, count, position, size, texture, tone)
        for shape, colour, size, position, texture, tone in itertools.product(
            SHAPES, COLOURS, SIZES, POSITIONS, TEXTURES, TONES
        )
        for count in range(1, MAX_COUNT[size] + 1)
    ]


def test_confusion_rules_are_few_consistent_and_wrong() -> None:
    assert 3 <= len(RULES) <= 6
    scenes = _all_scenes()
    for rule in RULES:
        members = [scene for scene in scenes if rule.matches(scene)]
        assert 0.02 <= len(members) / len(scenes) <= 0.15, rule.name
        # Each rule really changes its attribute, for every scene it matches.
        assert all(perceive(s).value(rule.attribute) != s.value(rule.attribute) for s in members), rule.name
    for scene in scenes:
        attributes = [rule.attribute for rule in matching_rules(scene)]
        assert len(attributes) == len(set(attributes)), scene


# --- rendering ---------------------------------------------------------------------------------------


def _hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value of every pixel of an (H, W, 3) uint8 image, each (H, W)."""
    rgb = pixels.astype(float) / 255.0
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    spread = np.where(high > low, high - low, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(
        high == r, (g - b) / spread % 6, np.where(high == g, (b - r) / spread + 2, (r - g) / spread + 4)
    )
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)
    return hue * 60.0, saturation, high


def _coloured(pixels: np.ndarray) -> np.ndarray:
    """Mask of the clearly coloured pixels: objects, not the grey background or its noise."""
    _, saturation, value = _hsv(pixels)
    return (saturation > 0.3) & (value > 0.4)


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b) % 360, 360 - abs(a - b) % 360)


@pytest.mark.parametrize("colour", COLOURS)
def test_a_solid_scene_shows_its_colour(colour: str) -> None:
    scene = Scene("circle", colour, 2, "center", "large", "solid", "light")
    pixels = render_scene(scene, np.random.default_rng(7), 64).pixels
    hue, _, _ = _hsv(pixels)
    chosen = np.deg2rad(hue[_coloured(pixels)])
    assert chosen.size > 200
    mean = math.degrees(math.atan2(np.sin(chosen).mean(), np.cos(chosen).mean())) % 360
    nearest = min(COLOURS, key=lambda name: _hue_distance(mean, REFERENCE_HUES[name]))
    assert nearest == colour, (colour, mean)


def test_objects_stay_inside_apart_and_on_their_side() -> None:
    rng = np.random.default_rng(3)
    size = 64
    for index in range(300):
        scene = sample_scene(rng)
        rendering = render_scene(scene, np.random.default_rng(index), size)
        objects = rendering.objects
        assert len(objects) == scene.count
        for item in objects:
            assert item.radius <= item.x <= size - item.radius and item.radius <= item.y <= size - item.radius
        for a, b in itertools.combinations(objects, 2):
            assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
        # Every clearly coloured pixel lies in the half of the picture the position names.
        ys, xs = np.nonzero(_coloured(rendering.pixels))
        assert xs.size > 0, scene
        inside = {
            "left": xs < size / 2,
            "right": xs >= size / 2,
            "top": ys < size / 2,
            "bottom": ys >= size / 2,
            "center": (abs(xs - size / 2) < 0.35 * size) & (abs(ys - size / 2) < 0.35 * size),
        }[scene.position]
        assert inside.all(), scene


@pytest.mark.parametrize("texture", ["solid", "striped", "dotted"])
def test_every_object_shows_its_texture(texture: str) -> None:
    # Near each object's centre a textured object has dark pattern pixels; a solid one is even.
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for index, (shape, size, tone) in enumerate(itertools.product(SHAPES, SIZES, TONES)):
        colour = COLOURS[index % len(COLOURS)]
        scene = Scene(shape, colour, MAX_COUNT[size], "center", size, texture, tone)
        rendering = render_scene(scene, np.random.default_rng(index), 64)
        value = rendering.pixels.max(axis=2).astype(float)
        for item in rendering.objects:
            core = value[(xx - item.x) ** 2 + (yy - item.y) ** 2 <= (0.3 * item.radius) ** 2]
            evenness = core.min() / core.max()
            if texture == "solid":
                assert evenness > 0.75, (scene, evenness)
            else:
                assert evenness < 0.6, (scene, evenness)
