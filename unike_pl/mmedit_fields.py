"""MMEdit's record format: the fields both the reader (`unike_pl.data`) and the world writer follow.

Kept free of heavy imports so that the world generator's worker processes can use it.
"""

from __future__ import annotations

TASKS = ("vqa", "caption")
TEXT_FIELDS = ("src", "pred", "alt", "rephrase", "loc", "loc_ans", "m_loc_q", "m_loc_a")
IMAGE_FIELDS = {"image": "image_root", "image_rephrase": "rephrase_image_root", "m_loc": "image_root"}
"""Image fields and the config root each path is relative to."""
MMEDIT_FIELDS = (
    "src",
    "pred",
    "alt",
    "rephrase",
    "image",
    "image_rephrase",
    "loc",
    "loc_ans",
    "m_loc",
    "m_loc_q",
    "m_loc_a",
)
GROUP_FIELD = "group"
"""Optional (the embedded world's edits; absent from MMEdit): the labelled group of an edit, e.g.
`seen-rule` or `unseen-rule`. Results report every metric for all edits and for each group."""
