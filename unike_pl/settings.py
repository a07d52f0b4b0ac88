"""Checks of numeric settings where they are declared: a bad value stops the run naming the setting."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from unike_pl.errors import UserError


def _check(section: str, values: Mapping[str, float | None], ok: Callable[[float], bool], rule: str) -> None:
    bad = [
        f"{section}.{name} = {value}" for name, value in values.items() if value is not None and not ok(value)
    ]
    if bad:
        raise UserError(f"{', '.join(bad)}: {rule}")


def require_positive(section: str, **values: float | None) -> None:
    """Every given value must be > 0; None passes (the setting is off or takes its default)."""
    _check(section, values, lambda value: value > 0, "must be positive")


def require_non_negative(section: str, **values: float | None) -> None:
    """Every given value must be >= 0; None passes."""
    _check(section, values, lambda value: value >= 0, "must not be negative")
