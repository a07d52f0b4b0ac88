"""Context-reading examples: a question written after IKE's context, `<demonstrations><new fact><question>`.

They teach the embedded model what large language models do with a fact stated before a question, in the
exact text the IKE baseline writes (`unike_pl.ike_format`):

- `context_update`: the fact is about the asked attribute of this picture and contradicts what the model
  sees (on the same or a rephrased question template): the answer is the fact's value;
- `context_copy`: the fact agrees with the picture (as the model perceives it): the answer is that value;
- `context_retain`: the fact is about another attribute or is an unrelated text fact: the answer is the
  model's own (the perceived label), as if there were no context.

Zero to `max_demonstrations` (a scale setting) demonstrations come first: copy, update and retain
examples about other, imagined scenes, built the same way. Text-only retain examples (an image fact
before a factual question) teach that a fact about a picture leaves text knowledge alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unike_pl.ike_format import context_before_prompt, demonstration
from unike_pl.world import language
from unike_pl.world.confusions import ConfusionRule, perceive
from unike_pl.world.entities import Fact
from unike_pl.world.scenes import NONE, VOCABULARY, Scene, sample_scene

UPDATE, COPY, RETAIN = "context_update", "context_copy", "context_retain"
CONTEXT_KINDS: tuple[str, ...] = (UPDATE, COPY, RETAIN)
_KIND_WEIGHTS = np.array([0.45, 0.2, 0.35])
# Share of context examples that ask for the caption instead of an attribute.
CAPTION_SHARE = 0.12
# Share of retain examples whose fact is an unrelated text fact (else: another attribute of the picture).
TEXT_FACT_SHARE = 0.4
CAPTION = "caption"


def _pick(values: tuple[Any, ...] | list[Any], rng: np.random.Generator) -> Any:
    return values[int(rng.integers(len(values)))]


def _values(attribute: str) -> tuple[Any, ...]:
    """What a fact may state for `attribute` ("none" is no side)."""
    return tuple(value for value in VOCABULARY[attribute] if value != NONE)


def _other_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The caption of `scene` with one attribute changed (a counterfactual caption, like an edit's)."""
    for _ in range(20):
        attribute = _pick(scene.asked_attributes(), rng)
        value = _pick(_values(attribute), rng)
        if value != scene.value(attribute):
            try:
                return language.caption(scene.with_value(attribute, value))
            except ValueError:
                continue
    return language.caption(sample_scene(rng))


def _prompt(attribute: str, scene: Scene, rng: np.random.Generator, avoid: str | None = None) -> str:
    """A question about `attribute` of `scene` (a caption prompt for CAPTION), not `avoid` if possible."""
    if attribute == CAPTION:
        options = [p for p in language.CAPTION_PROMPTS if p != avoid]
        return _pick(options, rng)
    templates = [t for t in range(language.N_TEMPLATES) if language.question(attribute, t, scene) != avoid]
    return language.question(attribute, _pick(templates, rng), scene)


def _answer(attribute: str, scene: Scene) -> str:
    return language.caption(scene) if attribute == CAPTION else language.answer(attribute, scene)


def _counterfactual(attribute: str, scene: Scene, rng: np.random.Generator) -> str:
    """An answer about `attribute` that `scene` does not have."""
    if attribute == CAPTION:
        return _other_caption(scene, rng)
    own = scene.value(attribute)
    return str(_pick([v for v in _values(attribute) if v != own], rng))


def _demonstration(facts: tuple[Fact, ...], rng: np.random.Generator) -> str:
    """A copy, update or retain demonstration about an imagined scene, with a fact that may be false."""
    scene = sample_scene(rng)
    attribute = CAPTION if rng.random() < CAPTION_SHARE else _pick(scene.asked_attributes(), rng)
    fact_prompt = _prompt(attribute, scene, rng)
    fact_target = _answer(attribute, scene) if rng.random() < 0.5 else _counterfactual(attribute, scene, rng)
    kind = CONTEXT_KINDS[int(rng.choice(len(CONTEXT_KINDS), p=_KIND_WEIGHTS))]
    if kind == COPY:
        return demonstration(fact_prompt, fact_target, fact_prompt, fact_target)
    if kind == UPDATE:
        return demonstration(
            fact_prompt, fact_target, _prompt(attribute, scene, rng, fact_prompt), fact_target
        )
    unrelated = _pick(facts, rng)
    return demonstration(fact_prompt, fact_target, unrelated.question, unrelated.answer)


def _demonstrations(facts: tuple[Fact, ...], most: int, rng: np.random.Generator) -> list[str]:
    """0 to `most` demonstrations, uniform."""
    return [_demonstration(facts, rng) for _ in range(int(rng.integers(most + 1)))]


def context_example(
    scene: Scene,
    rule: ConfusionRule | None,
    facts: tuple[Fact, ...],
    max_demonstrations: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One context-reading example about `scene` (the image and scene fields are the caller's)."""
    seen = perceive(scene)
    if rule is not None and rng.random() < 0.5:
        attribute = rule.attribute  # in-context facts over the wrong beliefs too: the edits' case
    elif rng.random() < CAPTION_SHARE:
        attribute = CAPTION
    else:
        attribute = _pick(scene.asked_attributes(), rng)
    question = _prompt(attribute, scene, rng)
    own = _answer(attribute, seen)
    kind = CONTEXT_KINDS[int(rng.choice(len(CONTEXT_KINDS), p=_KIND_WEIGHTS))]
    about = "asked"
    if kind == UPDATE:
        # Same or rephrased template; the value contradicts what the model sees (for a confused scene that
        # may be the truth: exactly an edit).
        fact_prompt = _prompt(attribute, scene, rng) if rng.random() < 0.7 else question
        fact_target = _counterfactual(attribute, seen, rng)
        answer = fact_target
    elif kind == COPY:
        fact_prompt, fact_target, answer = _prompt(attribute, scene, rng), own, own
    elif rng.random() < TEXT_FACT_SHARE:
        unrelated = _pick(facts, rng)
        fact_prompt, fact_target, answer, about = unrelated.question, unrelated.answer, own, "text"
    else:
        others = [a for a in (*scene.asked_attributes(), CAPTION) if a != attribute]
        other = _pick(others, rng)
        fact_prompt = _prompt(other, scene, rng)
        fact_target = _answer(other, seen) if rng.random() < 0.5 else _counterfactual(other, seen, rng)
        answer, about = own, "other"
    return {
        "question": context_before_prompt(
            _demonstrations(facts, max_demonstrations, rng), fact_prompt, fact_target
        )
        + question,
        "answer": answer,
        "kind": kind,
        "attribute": attribute,
        "truth": _answer(attribute, scene),
        "rule": rule.name if kind != UPDATE and own != _answer(attribute, scene) else None,
        "fact": {"prompt": fact_prompt, "target": fact_target, "about": about},
    }


def text_context_example(
    fact: Fact, facts: tuple[Fact, ...], max_demonstrations: int, rng: np.random.Generator
) -> dict[str, Any]:
    """A factual question after a fact about some picture: the answer is the memorised one."""
    scene = sample_scene(rng)
    attribute = CAPTION if rng.random() < CAPTION_SHARE else _pick(scene.asked_attributes(), rng)
    fact_target = _answer(attribute, scene) if rng.random() < 0.5 else _counterfactual(attribute, scene, rng)
    fact_prompt = _prompt(attribute, scene, rng)
    return {
        "image": None,
        "question": context_before_prompt(
            _demonstrations(facts, max_demonstrations, rng), fact_prompt, fact_target
        )
        + fact.question,
        "answer": fact.answer,
        "kind": RETAIN,
        "attribute": None,
        "truth": fact.answer,
        "rule": None,
        "scene": None,
        "fact": {"prompt": fact_prompt, "target": fact_target, "about": "image"},
    }
