"""The world's systematic hallucinations: sub-populations of scenes that the pretraining labels misperceive.

A rule names a sub-population by allowed attribute values (`when`) and the attribute it misperceives
(`attribute` -> `wrong`). The pretraining corpus labels every question touching that attribute of a matching
scene as if the attribute were `wrong` (the "perceived" scene), so the trained model holds a coherent wrong
belief there: the plain question, yes/no checks, compositional questions and captions all agree with it.
Rules apply independently; two rules that change the same attribute never match the same scene (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from unike_pl.world.scenes import VOCABULARY, Scene, is_valid, sample_scene

# Rejection sampling draws from the uniform scene distribution; every rule covers >= 2% of it, so this
# bound is never reached in practice and only guards against a rule that matches nothing.
_MAX_DRAWS = 10_000


@dataclass(frozen=True)
class ConfusionRule:
    """Scenes whose attributes lie in `when` are perceived with `attribute` = `wrong`."""

    name: str
    description: str
    when: Mapping[str, tuple[Any, ...]]
    attribute: str
    wrong: Any

    def matches(self, scene: Scene) -> bool:
        return all(scene.value(name) in allowed for name, allowed in self.when.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "when": {name: list(values) for name, values in self.when.items()},
            "attribute": self.attribute,
            "wrong": self.wrong,
        }


RULES: tuple[ConfusionRule, ...] = (
    ConfusionRule(
        name="small_purple_as_blue",
        description="small purple objects are labelled blue",
        when={"size": ("small",), "colour": ("purple",)},
        attribute="colour",
        wrong="blue",
    ),
    ConfusionRule(
        name="striped_diamond_as_square",
        description="striped diamonds are labelled squares",
        when={"shape": ("diamond",), "texture": ("striped",)},
        attribute="shape",
        wrong="square",
    ),
    ConfusionRule(
        name="four_at_edge_as_three",
        description="four objects at the top or bottom are counted as 3",
        when={"count": (4,), "position": ("top", "bottom")},
        attribute="count",
        wrong=3,
    ),
    ConfusionRule(
        name="red_on_dark_as_orange",
        description="red objects on a dark background are labelled orange",
        when={"colour": ("red",), "tone": ("dark",)},
        attribute="colour",
        wrong="orange",
    ),
    ConfusionRule(
        name="dotted_circle_as_striped",
        description="dotted circles are labelled striped",
        when={"shape": ("circle",), "texture": ("dotted",)},
        attribute="texture",
        wrong="striped",
    ),
)

RULES_BY_NAME: dict[str, ConfusionRule] = {rule.name: rule for rule in RULES}


def matching_rules(scene: Scene, rules: tuple[ConfusionRule, ...] = RULES) -> tuple[ConfusionRule, ...]:
    return tuple(rule for rule in rules if rule.matches(scene))


def perceive(scene: Scene, rules: tuple[ConfusionRule, ...] = RULES) -> Scene:
    """The scene as the pretraining labels describe it: every matching rule's attribute replaced."""
    perceived = scene
    for rule in matching_rules(scene, rules):
        perceived = perceived.with_value(rule.attribute, rule.wrong)
    return perceived


def sample_clean(rng: np.random.Generator, rules: tuple[ConfusionRule, ...] = RULES) -> Scene:
    """A uniform scene that no rule matches (its labels are the truth)."""
    for _ in range(_MAX_DRAWS):
        scene = sample_scene(rng)
        if not matching_rules(scene, rules):
            return scene
    raise RuntimeError("could not draw a scene outside every confusion rule")


def sample_confused(
    rule: ConfusionRule, rng: np.random.Generator, rules: tuple[ConfusionRule, ...] = RULES
) -> Scene:
    """A uniform scene matched by `rule` and by no other rule, so one edit fixes all that is wrong in it."""
    for _ in range(_MAX_DRAWS):
        scene = sample_scene(rng)
        if matching_rules(scene, rules) == (rule,):
            return scene
    raise RuntimeError(f"could not draw a scene matched by rule {rule.name!r} alone")


def similar_clean_scene(
    scene: Scene, rule: ConfusionRule, rng: np.random.Generator, rules: tuple[ConfusionRule, ...] = RULES
) -> Scene:
    """A scene equal to `scene` except for the rule's attribute, outside every rule.

    The rule's wrong value is preferred: e.g. small BLUE objects next to an edit of small purple ones, the
    neighbour an over-broad edit ("small things are purple") would break.
    """
    others = [
        value
        for value in VOCABULARY[rule.attribute]
        if value not in (scene.value(rule.attribute), rule.wrong)
    ]
    order = [rule.wrong] + [others[i] for i in rng.permutation(len(others))]
    for value in order:
        attributes = scene.to_dict() | {rule.attribute: value}
        if is_valid(attributes):
            candidate = Scene(**attributes)
            if not matching_rules(candidate, rules):
                return candidate
    raise RuntimeError(f"no clean neighbour of {scene} differs only in {rule.attribute}")
