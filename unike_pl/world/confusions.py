"""The world's systematic hallucinations: sub-populations of scenes that the pretraining labels misperceive.

A rule names a sub-population by allowed attribute values (`when`) and the attribute it misperceives
(`attribute` -> `wrong`). The pretraining corpus labels every question touching that attribute of a matching
scene as if the attribute were `wrong` (the "perceived" scene), so the trained model holds a coherent wrong
belief there: the plain question, yes/no checks, compositional questions and captions all agree with it.
Rules apply independently; two rules that change the same attribute never match the same scene (tested).
Each rule belongs to a group: *seen* rules have edit records in the training splits, *unseen* rules only in
the eval splits; both sub-populations are in the pretraining corpus, labelled wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from unike_pl.world.scenes import COMPANIONS, NONE, SHAPES, VOCABULARY, Scene, is_valid, sample_scene

# The two groups of eval edits: rules that also have training records (the knowledge memory and the IKE
# demonstrations come from them) and rules whose edits appear in no training split.
SEEN, UNSEEN = "seen-rule", "unseen-rule"
GROUPS: tuple[str, ...] = (SEEN, UNSEEN)

# Rejection sampling draws from the uniform scene distribution; every rule covers >= 0.5% of it, so this
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
    group: str
    """SEEN (its edits are also in the training splits) or UNSEEN (eval edits only)."""

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"rule {self.name!r}: group {self.group!r} is not one of {GROUPS}")

    def matches(self, scene: Scene) -> bool:
        return all(scene.value(name) in allowed for name, allowed in self.when.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "when": {name: list(values) for name, values in self.when.items()},
            "attribute": self.attribute,
            "wrong": self.wrong,
            "group": self.group,
        }


def _but(values: tuple[Any, ...], *excluded: Any) -> tuple[Any, ...]:
    return tuple(value for value in values if value not in excluded)


def _rule(
    group: str, name: str, description: str, when: dict[str, tuple[Any, ...]], attribute: str, wrong: Any
) -> ConfusionRule:
    return ConfusionRule(name, description, when, attribute, wrong, group)


# Per attribute, the true values of seen and of unseen rules are disjoint: a question's text depends only
# on the attribute, the template and the number (and, for the relation, the two shapes), and an edit's
# target is the true value, so no unseen-rule (question, target) pair can be a seen-rule training record's.
# No unseen rule depends on the background tone, which captions do not mention: a training caption could
# otherwise equal an unseen-rule caption (the same scene on the other background). Shape rules leave out
# scenes whose companion has the wrong shape (the perceived scene would be invalid); position rules only
# move a group to the centre (every relation fits there) or leave companion-free scenes.
RULES: tuple[ConfusionRule, ...] = (
    # colour: seen {purple, red}, unseen {pink, green, yellow}
    _rule(SEEN, "small_purple_as_blue", "small purple objects are labelled blue",
          {"size": ("small",), "colour": ("purple",)}, "colour", "blue"),
    _rule(SEEN, "red_on_dark_as_orange", "red objects on a dark background are labelled orange",
          {"colour": ("red",), "tone": ("dark",)}, "colour", "orange"),
    _rule(UNSEEN, "striped_pink_as_red", "striped pink objects are labelled red",
          {"colour": ("pink",), "texture": ("striped",)}, "colour", "red"),
    _rule(UNSEEN, "green_triangles_as_yellow", "green triangles are labelled yellow",
          {"colour": ("green",), "shape": ("triangle",)}, "colour", "yellow"),
    _rule(UNSEEN, "small_yellow_with_companion_as_orange",
          "small yellow objects with a companion are labelled orange",
          {"colour": ("yellow",), "size": ("small",), "companion": SHAPES}, "colour", "orange"),
    # shape: seen {diamond, circle}, unseen {star, triangle}
    _rule(SEEN, "striped_diamond_as_square", "striped diamonds are labelled squares",
          {"shape": ("diamond",), "texture": ("striped",), "companion": _but(COMPANIONS, "square")},
          "shape", "square"),
    _rule(SEEN, "circles_at_the_bottom_as_diamonds", "circles at the bottom are labelled diamonds",
          {"shape": ("circle",), "position": ("bottom",), "companion": _but(COMPANIONS, "diamond")},
          "shape", "diamond"),
    _rule(UNSEEN, "dotted_star_as_cross", "dotted stars are labelled crosses",
          {"shape": ("star",), "texture": ("dotted",), "companion": _but(COMPANIONS, "cross")},
          "shape", "cross"),
    _rule(UNSEEN, "large_triangle_as_diamond", "large triangles are labelled diamonds",
          {"shape": ("triangle",), "size": ("large",), "companion": _but(COMPANIONS, "diamond")},
          "shape", "diamond"),
    # count: seen {4}, unseen {3, 2}; never across one (the number of the nouns would change too)
    _rule(SEEN, "four_at_edge_as_three", "four objects at the top or bottom are counted as 3",
          {"count": (4,), "position": ("top", "bottom")}, "count", 3),
    _rule(UNSEEN, "three_large_on_a_side_as_two", "three large objects on the left or right are counted as 2",
          {"count": (3,), "size": ("large",), "position": ("left", "right")}, "count", 2),
    _rule(UNSEEN, "two_dotted_as_three", "two dotted squares, crosses or stars are counted as 3",
          {"count": (2,), "texture": ("dotted",), "shape": ("square", "cross", "star")}, "count", 3),
    # texture: seen {dotted}, unseen {striped, solid}
    _rule(SEEN, "dotted_circle_as_striped", "dotted circles are labelled striped",
          {"shape": ("circle",), "texture": ("dotted",)}, "texture", "striped"),
    _rule(UNSEEN, "small_striped_squares_as_solid", "small striped squares are labelled solid",
          {"shape": ("square",), "size": ("small",), "texture": ("striped",)}, "texture", "solid"),
    _rule(UNSEEN, "solid_crosses_on_a_side_as_dotted", "solid crosses left or right are labelled dotted",
          {"shape": ("cross",), "texture": ("solid",), "position": ("left", "right")}, "texture", "dotted"),
    # position: seen {right}, unseen {top, bottom}
    _rule(SEEN, "large_on_the_right_on_light_as_center",
          "large objects on the right on a light background are placed in the center",
          {"position": ("right",), "size": ("large",), "tone": ("light",)}, "position", "center"),
    _rule(UNSEEN, "dotted_at_the_top_as_center", "dotted objects at the top are placed in the center",
          {"position": ("top",), "texture": ("dotted",)}, "position", "center"),
    _rule(UNSEEN, "lone_blue_at_the_bottom_as_top",
          "blue or purple objects at the bottom without a companion are placed at the top",
          {"position": ("bottom",), "colour": ("blue", "purple"), "companion": (NONE,)}, "position", "top"),
    # size: seen {large}, unseen {small}
    _rule(SEEN, "large_yellow_as_small", "large yellow objects are labelled small",
          {"size": ("large",), "colour": ("yellow",)}, "size", "small"),
    _rule(UNSEEN, "few_small_crosses_as_large", "one to three small crosses are labelled large",
          {"size": ("small",), "shape": ("cross",), "count": (1, 2, 3)}, "size", "large"),
    # relation (only around a centred group, where every side fits): seen {left, below}, unseen {above}
    _rule(SEEN, "left_of_large_centre_as_right",
          "a companion left of a centred group of large objects is reported on the right",
          {"relation": ("left",), "position": ("center",), "size": ("large",)}, "relation", "right"),
    _rule(SEEN, "below_warm_centre_as_above",
          "a companion below a centred red, orange or yellow group is reported above it",
          {"relation": ("below",), "position": ("center",), "colour": ("red", "orange", "yellow")},
          "relation", "above"),
    _rule(UNSEEN, "above_striped_centre_as_below",
          "a companion above a centred group of striped objects is reported below it",
          {"relation": ("above",), "position": ("center",), "texture": ("striped",)}, "relation", "below"),
)  # fmt: skip

RULES_BY_NAME: dict[str, ConfusionRule] = {rule.name: rule for rule in RULES}
SEEN_RULES: tuple[ConfusionRule, ...] = tuple(rule for rule in RULES if rule.group == SEEN)
UNSEEN_RULES: tuple[ConfusionRule, ...] = tuple(rule for rule in RULES if rule.group == UNSEEN)


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
    rule: ConfusionRule,
    rng: np.random.Generator,
    rules: tuple[ConfusionRule, ...] = RULES,
    with_clean_neighbour: bool = False,
) -> Scene:
    """A uniform scene matched by `rule` and by no other rule, so one edit fixes all that is wrong in it;
    `with_clean_neighbour` also asks that `similar_clean_scene` can find it a neighbour (edit records)."""
    for _ in range(_MAX_DRAWS):
        scene = sample_scene(rng)
        if matching_rules(scene, rules) == (rule,) and (
            not with_clean_neighbour or _clean_neighbours(scene, rule, rules)
        ):
            return scene
    raise RuntimeError(f"could not draw a scene matched by rule {rule.name!r} alone")


def _clean_neighbours(scene: Scene, rule: ConfusionRule, rules: tuple[ConfusionRule, ...]) -> list[Scene]:
    """Valid scenes that differ from `scene` only in the rule's attribute and match no rule."""
    neighbours = []
    for value in VOCABULARY[rule.attribute]:
        attributes = scene.to_dict() | {rule.attribute: value}
        if value != scene.value(rule.attribute) and is_valid(attributes):
            candidate = Scene(**attributes)
            if not matching_rules(candidate, rules):
                neighbours.append(candidate)
    return neighbours


def similar_clean_scene(
    scene: Scene, rule: ConfusionRule, rng: np.random.Generator, rules: tuple[ConfusionRule, ...] = RULES
) -> Scene:
    """A scene equal to `scene` except for the rule's attribute, outside every rule.

    The rule's wrong value is preferred: e.g. small BLUE objects next to an edit of small purple ones, the
    neighbour an over-broad edit ("small things are purple") would break.
    """
    neighbours = {
        candidate.value(rule.attribute): candidate for candidate in _clean_neighbours(scene, rule, rules)
    }
    if not neighbours:
        raise RuntimeError(f"no clean neighbour of {scene} differs only in {rule.attribute}")
    if rule.wrong in neighbours:
        return neighbours[rule.wrong]
    values = list(neighbours)
    return neighbours[values[int(rng.integers(len(values)))]]
