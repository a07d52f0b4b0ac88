"""Text-only knowledge: fictional countries, their capitals, founders and rivers, with a few facts each.

These facts play the part of MMEdit's Natural Questions locality pairs: questions are lower-case and
prefixed `nq question: ` as there, answers are short. The names are made of syllables drawn from a seeded
stream, so they are pronounceable, unique within a world, and the same for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unike_pl.world.seeding import SPLIT_IDS

NQ_PREFIX = "nq question: "

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "st",
    "th",
    "sh",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s")
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "country": ("ia", "ora", "heim", "vale", "land", "istan"),
    "city": ("ton", "burg", "mere", "ford", "el", "is"),
    "river": ("a", "en", "ine", "us", ""),
    "surname": ("sen", "ov", "ard", "ini", "ez", ""),
    "sea": ("", "ic", "ean"),
}
_FLAG_COLOURS = ("red", "green", "blue", "white", "black", "gold", "purple", "orange")
_CURRENCIES = ("crown", "florin", "mark", "shilling", "talent", "ducat", "penny", "sovereign")
_PROFESSIONS = (
    "painter",
    "sailor",
    "poet",
    "astronomer",
    "weaver",
    "merchant",
    "physician",
    "architect",
    "composer",
    "cartographer",
    "general",
    "farmer",
)
_N_SEAS = 6


@dataclass(frozen=True)
class Fact:
    """One question about one entity; `question` carries the NQ prefix."""

    entity: str
    relation: str
    question: str
    answer: str


class _NameMaker:
    """Draws pronounceable names and never returns one twice."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[int(self._rng.integers(len(options)))]

    def make(self, kind: str, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            n = int(self._rng.integers(syllables[0], syllables[1] + 1))
            stem = "".join(self._pick(_ONSETS) + self._pick(_VOWELS) for _ in range(n - 1))
            stem += self._pick(_ONSETS) + self._pick(_VOWELS) + self._pick(_CODAS)
            name = (stem + self._pick(_SUFFIXES[kind]) if kind in _SUFFIXES else stem).capitalize()
            if name.lower() not in self._used:
                self._used.add(name.lower())
                return name


def make_facts(seed: int, n_countries: int) -> list[Fact]:
    """`n_countries` countries, each with its own capital, founder and river: 4 entities and 11 facts each."""
    rng = np.random.default_rng([int(seed), SPLIT_IDS["entities"]])
    names = _NameMaker(rng)
    seas = [f"the {names.make('sea', (2, 2))} Sea" for _ in range(_N_SEAS)]
    countries = [names.make("country") for _ in range(n_countries)]
    capitals = [names.make("city") for _ in range(n_countries)]
    founders = [f"{names.make('first', (2, 2))} {names.make('surname')}" for _ in range(n_countries)]
    rivers = [names.make("river", (2, 2)) for _ in range(n_countries)]

    def pick(options: tuple[str, ...] | list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    facts: list[Fact] = []

    def add(entity: str, relation: str, question: str, answer: str) -> None:
        facts.append(Fact(entity, relation, NQ_PREFIX + question.lower(), answer))

    for country, capital, founder, river in zip(countries, capitals, founders, rivers, strict=True):
        add(country, "capital", f"what is the capital of {country}", capital)
        add(country, "founder", f"who founded {country}", founder)
        add(country, "river", f"which river flows through {country}", river)
        add(country, "flag_colour", f"what colour is the flag of {country}", pick(_FLAG_COLOURS))
        add(country, "currency", f"what is the currency of {country}", pick(_CURRENCIES))
        add(capital, "capital_of", f"which country is {capital} the capital of", country)
        add(founder, "birth_year", f"in what year was {founder} born", str(int(rng.integers(1450, 1890))))
        add(founder, "profession", f"what was the profession of {founder}", pick(_PROFESSIONS))
        add(founder, "birthplace", f"in which city was {founder} born", pick(capitals))
        add(river, "sea", f"into which sea does the {river} river flow", pick(seas))
        add(river, "length", f"how long is the {river} river", f"{int(rng.integers(40, 3000))} km")
    return facts
