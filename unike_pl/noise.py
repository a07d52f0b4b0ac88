"""Third-party messages that tell a user of this project nothing, kept off their screen and logs."""

from __future__ import annotations

import logging
import warnings

ADVERTISEMENTS = ("litlogger",)
"""Words of Lightning's start-up tips that advertise a service."""


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(word in record.getMessage() for word in ADVERTISEMENTS)


def quiet_third_party() -> None:
    """Drop Lightning's service tips and the deprecation notices its own code triggers in torch."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
