"""Pretraining examples: questions about one rendered scene, labelled as the world "perceives" it.

A share of scenes comes from a confusion rule's sub-population; for those the rule's question and one
related question (yes/no or compositional on the same attribute) are always asked, so the wrong belief is
learnt reliably and coherently. All other labels are the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unike_pl.world import language
from unike_pl.world.confusions import (
    RULES,
    ConfusionRule,
    matching_rules,
    perceive,
    sample_clean,
    sample_confused,
)
from unike_pl.world.context import IMAGE_ROOT, ImageFile, WorldContext
from unike_pl.world.scenes import ASKED_ATTRIBUTES, VOCABULARY, Scene
from unike_pl.world.seeding import Stream, stream

# (kind, attribute) of every question a scene can get, with its sampling weight: mostly plain VQA.
_TASKS: tuple[tuple[str, str | None], ...] = (
    tuple(("vqa", a) for a in ASKED_ATTRIBUTES)
    + (("caption", None),)
    + tuple(("verify", a) for a in ASKED_ATTRIBUTES)
    + tuple(("compose", a) for a in ASKED_ATTRIBUTES)
)
_WEIGHTS: dict[str, float] = {"vqa": 1.0, "caption": 0.8, "verify": 0.25, "compose": 0.25}


def _verify_value(attribute: str, scene: Scene, rule: ConfusionRule | None, rng: np.random.Generator) -> Any:
    """The value a yes/no question claims: the true one half of the time, else another one.

    On a rule's own attribute the other value is the rule's wrong one, so the wrong belief is asked both
    ways ("Are they purple?" no, "Are they blue?" yes).
    """
    true_value = scene.value(attribute)
    if rng.random() < 0.5:
        return true_value
    if rule is not None and rule.attribute == attribute:
        return rule.wrong
    others = [v for v in VOCABULARY[attribute] if v != true_value]
    return others[int(rng.integers(len(others)))]


def _example(
    kind: str, attribute: str | None, scene: Scene, rule: ConfusionRule | None, rng: np.random.Generator
) -> tuple[str, str, str]:
    """(question, label, truth) for one task; the question is phrased from the true scene."""
    seen = perceive(scene)
    if kind == "vqa":
        template = int(rng.integers(language.N_TEMPLATES))
        return (
            language.question(attribute, template, scene),
            language.answer(attribute, seen),
            language.answer(attribute, scene),
        )
    if kind == "caption":
        prompt = language.CAPTION_PROMPTS[int(rng.integers(len(language.CAPTION_PROMPTS)))]
        return prompt, language.caption(seen), language.caption(scene)
    if kind == "verify":
        value = _verify_value(attribute, scene, rule, rng)
        template = int(rng.integers(len(language.VERIFY_TEMPLATES)))
        return (
            language.verify_question(attribute, value, template, scene),
            language.verify_answer(attribute, value, seen),
            language.verify_answer(attribute, value, scene),
        )
    if kind == "compose":
        return (
            language.compose_question(attribute, scene),
            language.compose_answer(attribute, seen),
            language.compose_answer(attribute, scene),
        )
    raise ValueError(f"unknown task kind {kind!r}")


def _choose_tasks(
    rule: ConfusionRule | None, n: int, rng: np.random.Generator
) -> list[tuple[str, str | None]]:
    chosen: list[tuple[str, str | None]] = []
    if rule is not None:
        chosen = [("vqa", rule.attribute), (("verify", "compose")[int(rng.integers(2))], rule.attribute)]
    rest = [task for task in _TASKS if task not in chosen]
    weights = np.array([_WEIGHTS[kind] for kind, _ in rest])
    picks = rng.choice(len(rest), size=max(0, n - len(chosen)), replace=False, p=weights / weights.sum())
    return chosen + [rest[int(i)] for i in picks]


def build_pretrain_scene(
    context: WorldContext, split: str, index: int
) -> tuple[list[dict[str, Any]], list[ImageFile]]:
    """The examples and the image of pretraining scene `index` of `split`."""
    rule_rng = stream(context.seed, split, index, Stream.RULE)
    scene_rng = stream(context.seed, split, index, Stream.SCENE)
    rule: ConfusionRule | None = None
    if rule_rng.random() < context.confused_scene_rate:
        rule = RULES[int(rule_rng.integers(len(RULES)))]
        scene = sample_confused(rule, scene_rng)
    else:
        scene = sample_clean(scene_rng)
    if matching_rules(scene) != ((rule,) if rule else ()):
        raise RuntimeError(f"scene {scene} was drawn for rule {rule} but matches {matching_rules(scene)}")

    relative = f"{split}/{index:06d}.png"
    image = context.draw(scene, stream(context.seed, split, index, Stream.RENDER), IMAGE_ROOT, relative)
    text_rng = stream(context.seed, split, index, Stream.TEXT)
    examples = []
    for kind, attribute in _choose_tasks(rule, context.questions_per_scene, text_rng):
        question, label, truth = _example(kind, attribute, scene, rule, text_rng)
        examples.append(
            {
                "image": relative,
                "question": question,
                "answer": label,
                "kind": kind,
                "attribute": attribute,
                "truth": truth,
                "rule": rule.name if label != truth else None,
                "scene": scene.to_dict(),
            }
        )
    return examples, [image]


def text_examples(context: WorldContext) -> list[dict[str, Any]]:
    """Every entity fact once, with no image: facts are memorised, so train and val hold the same ones."""
    return [
        {
            "image": None,
            "question": fact.question,
            "answer": fact.answer,
            "kind": "text",
            "attribute": None,
            "truth": fact.answer,
            "rule": None,
            "scene": None,
        }
        for fact in context.facts
    ]
