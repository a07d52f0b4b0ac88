"""Pretraining examples: questions about one rendered scene, labelled as the world "perceives" it.

A share of scenes comes from a confusion rule's sub-population; for those the rule's question, a yes/no
check and a compositional question on the same attribute are always asked, so the wrong belief is learnt
reliably and coherently. All other labels are the truth. Yes/no and compositional questions are common
(as common as plain ones), so the model answers them on its own knowledge. Each scene also gets
`context_examples_per_scene` context-reading examples (`unike_pl.world.incontext`); text facts get one each.
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
from unike_pl.world.incontext import context_example, text_context_example
from unike_pl.world.scenes import NONE, VOCABULARY, Scene
from unike_pl.world.seeding import Stream, stream

# Sampling weight of each (kind, attribute) task: yes/no checks as common as plain questions.
_WEIGHTS: dict[str, float] = {"vqa": 1.0, "caption": 2.0, "verify": 1.0, "compose": 0.7}


def _tasks(scene: Scene) -> list[tuple[str, str | None]]:
    """(kind, attribute) of every question `scene` can get (the relation only with a companion)."""
    attributes = scene.asked_attributes()
    return (
        [("vqa", a) for a in attributes]
        + [("caption", None)]
        + [("verify", a) for a in attributes]
        + [("compose", a) for a in attributes]
    )


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
    others = [v for v in VOCABULARY[attribute] if v not in (true_value, NONE)]
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
        template = int(rng.integers(len(language.verify_templates(attribute))))
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
    scene: Scene, rule: ConfusionRule | None, n: int, rng: np.random.Generator
) -> list[tuple[str, str | None]]:
    chosen: list[tuple[str, str | None]] = []
    if rule is not None:
        chosen = [(kind, rule.attribute) for kind in ("vqa", "verify", "compose")]
    rest = [task for task in _tasks(scene) if task not in chosen]
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
        rule = RULES[int(rule_rng.integers(len(RULES)))]  # unseen rules too: the model holds their belief
        scene = sample_confused(rule, scene_rng)
    else:
        scene = sample_clean(scene_rng)
    if matching_rules(scene) != ((rule,) if rule else ()):
        raise RuntimeError(f"scene {scene} was drawn for rule {rule} but matches {matching_rules(scene)}")

    relative = f"{split}/{index:06d}.png"
    image = context.draw(scene, stream(context.seed, split, index, Stream.RENDER), IMAGE_ROOT, relative)
    text_rng = stream(context.seed, split, index, Stream.TEXT)
    examples = []
    for kind, attribute in _choose_tasks(scene, rule, context.questions_per_scene, text_rng):
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
    context_rng = stream(context.seed, split, index, Stream.CONTEXT)
    for _ in range(context.context_examples_per_scene):
        example = context_example(scene, rule, context.facts, context.max_demonstrations, context_rng)
        examples.append({"image": relative, **example, "scene": scene.to_dict()})
    return examples, [image]


def text_examples(context: WorldContext, split: str) -> list[dict[str, Any]]:
    """Every entity fact once, with no image (facts are memorised, so train and val hold the same ones),
    then each fact once after a context about some picture (drawn per split)."""
    plain = [
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
    contextual = [
        text_context_example(
            fact,
            context.facts,
            context.max_demonstrations,
            stream(context.seed, split, index, Stream.TEXT_CONTEXT),
        )
        for index, fact in enumerate(context.facts)
    ]
    return plain + contextual
