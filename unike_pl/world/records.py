"""MMEdit-format edit records, drawn from the confused sub-populations so that `pred` (what the pretrained
model is taught to say) differs from `alt` (the truth, the edit target).

Besides MMEdit's fields a record carries `related` (questions whose answer the edit must change, answered
with the truth) and `hard_loc` (close neighbours whose answer must not change), plus `rule`, `group`
(the rule's: "seen-rule" or "unseen-rule") and `scene` for analysis.

Training splits draw from the seen rules only; eval splits alternate between unseen and seen rules, so at
least half of every eval split comes from rules no training record comes from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unike_pl.mmedit_fields import TASKS
from unike_pl.world import language
from unike_pl.world.confusions import (
    SEEN_RULES,
    UNSEEN_RULES,
    ConfusionRule,
    perceive,
    sample_clean,
    sample_confused,
    similar_clean_scene,
)
from unike_pl.world.context import IMAGE_ROOT, REPHRASE_IMAGE_ROOT, ImageFile, WorldContext
from unike_pl.world.scenes import Scene
from unike_pl.world.seeding import Stream, stream

SAME_IMAGE = "same_image_other_question"
SIMILAR_SCENE = "similar_scene_same_question"


def _related(rule: ConfusionRule, scene: Scene, rng: np.random.Generator) -> list[dict[str, str]]:
    """Yes/no checks of the true and of the hallucinated value, and a compositional question: all of them
    are answered differently by the unedited model, and the truth is what the edit should lead to."""
    attribute = rule.attribute
    true_value = scene.value(attribute)
    related = []
    for value in (true_value, rule.wrong):
        template = int(rng.integers(len(language.verify_templates(attribute))))
        related.append(
            {
                "q": language.verify_question(attribute, value, template, scene),
                "a": language.verify_answer(attribute, value, scene),
            }
        )
    related.append(
        {"q": language.compose_question(attribute, scene), "a": language.compose_answer(attribute, scene)}
    )
    return related


def _other_questions(
    rule: ConfusionRule, scene: Scene, image: str, rng: np.random.Generator, n: int = 2
) -> list[dict[str, str]]:
    """Questions on the edited image about attributes the edit must leave alone."""
    others = [a for a in scene.asked_attributes() if a != rule.attribute]
    picked = rng.choice(len(others), size=n, replace=False)
    return [
        {
            "image": image,
            "q": language.question(others[int(i)], int(rng.integers(language.N_TEMPLATES)), scene),
            "a": language.answer(others[int(i)], scene),
            "kind": SAME_IMAGE,
        }
        for i in picked
    ]


def _text_locality(context: WorldContext, split: str, index: int) -> dict[str, str]:
    """`loc` / `loc_ans` from the world's real factual questions, when it has them (its own stream, so
    every other field is the same as in the world without them)."""
    if not context.text_locality:
        return {}
    rng = stream(context.seed, split, index, Stream.TEXT_LOCALITY)
    question, answer = context.text_locality[int(rng.integers(len(context.text_locality)))]
    return {"loc": question, "loc_ans": answer}


def edit_rule(split: str, index: int) -> ConfusionRule:
    """The rule record `index` of `split` comes from: seen rules in turn for a training split; for an eval
    split unseen (even indices) and seen (odd) rules in turn, so every rule has about as many edits."""
    if split.endswith("_train"):
        return SEEN_RULES[index % len(SEEN_RULES)]
    rules = UNSEEN_RULES if index % 2 == 0 else SEEN_RULES
    return rules[(index // 2) % len(rules)]


def build_edit_record(
    context: WorldContext, task: str, split: str, index: int
) -> tuple[dict[str, Any], list[ImageFile]]:
    """Record `index` of an edit split (`task` "vqa" or "caption") and the images it refers to."""
    if task not in TASKS:
        raise ValueError(f"unknown edit task {task!r}; expected one of {TASKS}")
    rule = edit_rule(split, index)
    scene = sample_confused(rule, stream(context.seed, split, index, Stream.SCENE), with_clean_neighbour=True)
    seen = perceive(scene)
    rng = stream(context.seed, split, index, Stream.TEXT)
    attribute = rule.attribute

    if task == "vqa":
        src_template, rephrase_template = (int(t) for t in rng.permutation(language.N_TEMPLATES)[:2])
        src = language.question(attribute, src_template, scene)
        rephrase = language.question(attribute, rephrase_template, scene)
        pred, alt = language.answer(attribute, seen), language.answer(attribute, scene)
    else:
        src, rephrase = (
            language.CAPTION_PROMPTS[int(t)] for t in rng.permutation(len(language.CAPTION_PROMPTS))[:2]
        )
        pred, alt = language.caption(seen), language.caption(scene)

    image = f"{split}/{index:06d}.png"
    locality_image = f"{split}/{index:06d}_mloc.png"
    similar_image = f"{split}/{index:06d}_similar.png"
    fact = context.facts[int(rng.integers(len(context.facts)))]
    locality_scene = sample_clean(stream(context.seed, split, index, Stream.LOCALITY_SCENE))
    locality_attributes = locality_scene.asked_attributes()
    locality_attribute = locality_attributes[int(rng.integers(len(locality_attributes)))]
    similar = similar_clean_scene(scene, rule, rng)
    similar_answer = language.answer(attribute, similar) if task == "vqa" else language.caption(similar)

    record = {
        "src": src,
        "pred": pred,
        "alt": alt,
        "rephrase": rephrase,
        "image": image,
        "image_rephrase": image,
        "loc": fact.question,
        "loc_ans": fact.answer,
        **_text_locality(context, split, index),
        "m_loc": locality_image,
        "m_loc_q": language.question(
            locality_attribute, int(rng.integers(language.N_TEMPLATES)), locality_scene
        ),
        "m_loc_a": language.answer(locality_attribute, locality_scene),
        "related": _related(rule, scene, rng),
        "hard_loc": _other_questions(rule, scene, image, rng)
        + [{"image": similar_image, "q": src, "a": similar_answer, "kind": SIMILAR_SCENE}],
        "rule": rule.name,
        "group": rule.group,
        "scene": scene.to_dict(),
    }
    images = [
        context.draw(scene, stream(context.seed, split, index, Stream.RENDER), IMAGE_ROOT, image),
        context.draw(
            scene, stream(context.seed, split, index, Stream.RENDER_REPHRASE), REPHRASE_IMAGE_ROOT, image
        ),
        context.draw(
            locality_scene,
            stream(context.seed, split, index, Stream.LOCALITY_RENDER),
            IMAGE_ROOT,
            locality_image,
        ),
        context.draw(
            similar, stream(context.seed, split, index, Stream.SIMILAR_RENDER), IMAGE_ROOT, similar_image
        ),
    ]
    return record, images
