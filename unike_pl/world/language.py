"""Questions, answers and captions about scenes.

Every asked attribute has `N_TEMPLATES` paraphrases, so an edit prompt and its rephrase can be drawn from
different templates. Questions agree in number with the scene ("is the object" / "are the objects");
count questions never do, so the grammar does not give their answer away. Answers are single words (or a
digit for counts), as in VQA; captions spell every asked attribute out. "The object(s)" is always the
coloured group; the companion is named by its shape only in relation questions ("Where is the cross
relative to the stars?") and counts ask for coloured objects, so a companion never makes a question
ambiguous.
"""

from __future__ import annotations

import re
from typing import Any

from unike_pl.world.scenes import Scene

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour {be} the {obj}?",
        "What is the colour of the {obj}?",
        "What color {be} the {obj} in the image?",
        "Which colour {do} the {obj} have?",
        "Tell me the colour of the {obj} in this picture.",
    ),
    "shape": (
        "What shape {be} the {obj}?",
        "What is the shape of the {obj}?",
        "Which coloured shape is shown in the image?",
        "What kind of shape {be} the {obj} in the picture?",
        "Name the shape of the {obj} in this image.",
    ),
    "count": (
        "How many coloured objects are there?",
        "How many coloured objects are in the image?",
        "What is the number of coloured objects in the picture?",
        "Count the coloured objects. How many are there?",
        "How many coloured shapes can you see?",
    ),
    "position": (
        "Where {be} the {obj}?",
        "Where in the image {be} the {obj}?",
        "In which part of the picture {be} the {obj}?",
        "Where {be} the {obj} located?",
        "What is the position of the {obj} in the image?",
    ),
    "size": (
        "What size {be} the {obj}?",
        "{Be} the {obj} small or large?",
        "How big {be} the {obj}?",
        "What is the size of the {obj}?",
        "Would you call the {obj} small or large?",
    ),
    "texture": (
        "What texture {do} the {obj} have?",
        "What pattern is on the {obj}?",
        "{Be} the {obj} solid, striped or dotted?",
        "What is the surface pattern of the {obj}?",
        "How {be} the {obj} filled?",
    ),
    "relation": (
        "Where is the {comp} relative to the {group}?",
        "On which side of the {group} is the {comp}?",
        "Where is the {comp} placed with respect to the {group}?",
        "In which direction from the {group} is the {comp}?",
        "Where does the {comp} lie compared to the {group}?",
    ),
}
N_TEMPLATES = 5

# Yes/no checks of one attribute value; `{claim}` is e.g. "purple", "stars", "on the left".
VERIFY_TEMPLATES: tuple[str, ...] = ("{Be} the {obj} {claim}?", "Is it true that the {obj} {be} {claim}?")
COUNT_VERIFY_TEMPLATES: tuple[str, ...] = (
    "{Be} there exactly {number} coloured {noun}?",
    "Is the number of coloured objects {digit}?",
)
RELATION_VERIFY_TEMPLATES: tuple[str, ...] = (
    "Is the {comp} {claim} the {group}?",
    "Is it true that the {comp} is {claim} the {group}?",
)

# One question about two attributes at once: the asked attribute and the shape (or the colour, for shape).
COMPOSE_TEMPLATES: dict[str, str] = {
    "colour": "What colour and shape {be} the {obj}?",
    "shape": "What shape and colour {be} the {obj}?",
    "count": "How many objects are there and what shape {be} {they}?",
    "position": "What shape {be} the {obj} and where {be} {they}?",
    "size": "What size and shape {be} the {obj}?",
    "texture": "What pattern and shape {do} the {obj} have?",
    "relation": "Which shape is beside the {group} and on which side?",
}

CAPTION_PROMPTS: tuple[str, ...] = (
    "a photo of",
    "a picture of",
    "an image of",
    "a photograph of",
    "a drawing of",
)

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Where the companion is, in captions and compositional answers ("a cross to the right") ...
RELATION_PHRASES: dict[str, str] = {
    "left": "to the left",
    "right": "to the right",
    "above": "above",
    "below": "below",
}
# ... and in yes/no checks ("Is the cross to the right of the stars?").
RELATION_CLAIMS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
_PLURAL_SUFFIX: dict[str, str] = {"cross": "es"}

YES, NO = "yes", "no"


def shape_noun(shape: str, plural: bool) -> str:
    return shape + _PLURAL_SUFFIX.get(shape, "s") if plural else shape


def _fill(template: str, plural: bool, **extra: str) -> str:
    words = {
        "obj": "objects" if plural else "object",
        "be": "are" if plural else "is",
        "do": "do" if plural else "does",
        "they": "they" if plural else "it",
    }
    words |= {"Be": words["be"].capitalize()} | extra
    return template.format(**words)


def _names(scene: Scene) -> dict[str, str]:
    """The group's and the companion's nouns, which relation templates name."""
    return {"group": shape_noun(scene.shape, scene.plural), "comp": scene.companion}


def _askable(attribute: str, scene: Scene) -> None:
    if attribute not in scene.asked_attributes():
        raise KeyError(f"no question asks about {attribute!r} of {scene}")


def question(attribute: str, template: int, scene: Scene) -> str:
    """Paraphrase number `template` of the question about `attribute` of `scene`."""
    _askable(attribute, scene)
    return _fill(QUESTION_TEMPLATES[attribute][template], scene.plural, **_names(scene))


def answer(attribute: str, scene: Scene) -> str:
    """The short answer naming `scene`'s value of `attribute`."""
    _askable(attribute, scene)
    return str(scene.value(attribute))


def _claim(attribute: str, value: Any, plural: bool) -> str:
    if attribute == "shape":
        return shape_noun(value, plural) if plural else f"a {value}"
    if attribute == "position":
        return POSITION_PHRASES[value]
    if attribute == "relation":
        return RELATION_CLAIMS[value]
    return str(value)


def verify_templates(attribute: str) -> tuple[str, ...]:
    """The yes/no templates of `attribute`."""
    if attribute == "count":
        return COUNT_VERIFY_TEMPLATES
    return RELATION_VERIFY_TEMPLATES if attribute == "relation" else VERIFY_TEMPLATES


def verify_question(attribute: str, value: Any, template: int, scene: Scene) -> str:
    """A yes/no question: does `scene` have `value` for `attribute`? (answered by `verify_answer`)."""
    _askable(attribute, scene)
    if attribute == "count":
        return _fill(
            COUNT_VERIFY_TEMPLATES[template],
            value > 1,
            number=NUMBER_WORDS[value],
            noun="objects" if value > 1 else "object",
            digit=str(value),
        )
    return _fill(
        verify_templates(attribute)[template],
        scene.plural,
        claim=_claim(attribute, value, scene.plural),
        **_names(scene),
    )


def verify_answer(attribute: str, value: Any, scene: Scene) -> str:
    return YES if scene.value(attribute) == value else NO


def compose_question(attribute: str, scene: Scene) -> str:
    _askable(attribute, scene)
    return _fill(COMPOSE_TEMPLATES[attribute], scene.plural, **_names(scene))


def compose_answer(attribute: str, scene: Scene) -> str:
    """E.g. "purple stars", "4 stars", "stars on the left": the asked value with the shape; for the
    relation the companion's shape and side, "cross to the right"."""
    _askable(attribute, scene)
    if attribute == "relation":
        return f"{scene.companion} {RELATION_PHRASES[scene.relation]}"
    shapes = shape_noun(scene.shape, scene.plural)
    if attribute in ("colour", "shape"):
        return f"{scene.colour} {shapes}"
    if attribute == "position":
        return f"{shapes} {POSITION_PHRASES[scene.position]}"
    return f"{scene.value(attribute)} {shapes}"


def caption(scene: Scene) -> str:
    """E.g. "three small red striped circles on the left", "... with a cross to the right"."""
    words = [
        NUMBER_WORDS[scene.count],
        scene.size,
        scene.colour,
        scene.texture,
        shape_noun(scene.shape, scene.plural),
        POSITION_PHRASES[scene.position],
    ]
    if scene.has_companion:
        words += ["with a", scene.companion, RELATION_PHRASES[scene.relation]]
    return " ".join(words)


def _template_pattern(template: str, plural: bool) -> re.Pattern[str]:
    """A regular expression matching `template` filled for this number with any shape names."""
    marker = "\x00"
    filled = _fill(template, plural, comp=marker, group=marker)
    return re.compile(
        "".join("[a-z]+" if part == marker else re.escape(part) for part in re.split(f"({marker})", filled))
    )


def template_of(attribute: str, text: str) -> int | None:
    """Which paraphrase template of `attribute` produced `text`, if any (singular or plural)."""
    for index, template in enumerate(QUESTION_TEMPLATES[attribute]):
        if any(_template_pattern(template, plural).fullmatch(text) for plural in (False, True)):
            return index
    return None
