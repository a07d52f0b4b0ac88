"""Stored edits are validated when read back: a damaged file is named and its edit redone."""

from __future__ import annotations

import json

import pytest
import torch

from unike_pl.editing.store import EditResultStore
from unike_pl.metrics import names
from unike_pl.run_key import RunKey

REPORTS = [{"seconds": 0.5, "steps": 3}, {"seconds": 0.4, "steps": 2}]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: json.dumps({**json.loads(text), "scores": {}}), "no scores"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "edits"}), "no edits"),
        (lambda text: text.replace("0.25", "NaN"), "reliability: a score that is not a number in"),
        (lambda text: text.replace("0.25", "7.0"), "reliability: a score that is not a number in"),
        (lambda text: json.dumps({**json.loads(text), "edits": REPORTS[:1]}), "expected 2 edit reports"),
    ],
    ids=["truncated", "no-scores", "no-edits", "nan", "out-of-range", "reports"],
)
def test_a_damaged_stored_edit_is_named_and_redone(tmp_path, damage, problem):
    store = EditResultStore(tmp_path, RunKey({"method": "x"}))
    store.save([4, 5], [None, None], {names.RELIABILITY: torch.tensor([1.0, 0.25])}, REPORTS)
    assert store.load([4, 5], [None, None])["scores"] == {names.RELIABILITY: [1.0, 0.25]}
    file = store.path([4, 5])
    file.write_text(damage(file.read_text()))
    with pytest.warns(RuntimeWarning, match=f"{file.name}: {problem}.*the edit is redone"):
        assert store.load([4, 5], [None, None]) is None
