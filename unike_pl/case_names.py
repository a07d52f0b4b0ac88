"""The names of the inputs the data builds from one record, which metrics and methods refer to."""

from __future__ import annotations

from typing import Final

# The five inputs built from one MMEdit record.
EDIT: Final = "edit"
REPHRASE: Final = "rephrase"
IMAGE_REPHRASE: Final = "image_rephrase"
TEXT_LOCALITY: Final = "text_locality"
MULTIMODAL_LOCALITY: Final = "multimodal_locality"
CASES: Final = (EDIT, REPHRASE, IMAGE_REPHRASE, TEXT_LOCALITY, MULTIMODAL_LOCALITY)

# Neighbour cases: a list of inputs per record (the world's `related` and `hard_loc`; MMEdit has none),
# each scored as the mean over its inputs.
RELATED: Final = "related"
HARD_NEIGHBOURS: Final = "hard_neighbours"
NEIGHBOUR_CASES: Final = (RELATED, HARD_NEIGHBOURS)

TARGET_CASES: Final = (EDIT, REPHRASE, IMAGE_REPHRASE)
"""Scored against the edit's target."""
LOCALITY_CASES: Final = (TEXT_LOCALITY, MULTIMODAL_LOCALITY)
"""Scored against the unedited model's own predictions."""
