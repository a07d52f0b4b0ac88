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
    """Drop Lightning's service tips, the deprecation notices its own code triggers in torch, and its
    advice to pass a fit's callbacks to runs that only read the fit's weights."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # validate/test load weights with --ckpt_path from fit runs whose ModelCheckpoint they do not use.
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used")
