"""The router that SERAC and LDKE share: which edit each input is sent to, and how the answers of the edit
paths and the original model are merged per sample. Plain tensors and fakes, no model: SERAC's and LDKE's
routed answers on tiny models are checked in tests/test_serac.py and tests/test_ldke_router.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from unike_pl.editing.routing import EditRouter, RoutedAnswers

SEQ, VOCAB = 3, 5


def features_of(batch):
    """The fake base model: its logits and features are carried by the batch."""
    return batch["logits"], batch["features"]


class Dot:
    """Pair logits: dot products of the encoded sides. Encoding doubles: a stored key shows it was encoded."""

    def encode(self, features):
        return 2 * features

    def logits(self, queries, keys):
        return queries @ keys.T


def inputs(*features: list[float]) -> dict[str, torch.Tensor]:
    rows = torch.tensor(features)
    return {"features": rows, "logits": torch.randn(len(rows), SEQ, VOCAB)}


def test_the_router_sends_each_input_to_its_best_edit_above_the_threshold():
    router = EditRouter(features_of, Dot(), threshold=0.5)
    batch = inputs([1.0, 0.5], [0.2, 0.4], [0.0, 0.0], [-1.0, -1.0])
    logits, chosen = router.route(batch)
    assert chosen == [None] * 4 and logits is batch["logits"]  # no edit stored: the base model answers

    router.add(inputs([1.0, 0.0]))
    router.add(inputs([0.0, 1.0]))
    assert torch.equal(torch.stack(router.keys), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    logits, chosen = router.route(batch)
    # Pair logits (4, 2), (0.8, 1.6), (0, 0): a score of exactly the threshold is out of scope.
    assert chosen == [0, 1, None, None] and logits is batch["logits"]

    router.clear()
    assert router.keys == [] and router.route(batch)[1] == [None] * 4


class FixedRoutes:
    def __init__(self, logits, chosen):
        self.logits, self.chosen = logits, chosen

    def route(self, batch):
        return self.logits, self.chosen


class RecordingPath:
    """Answers row r with the value 100 · tag + r (logits) or "tag r" (answers); records each call's rows."""

    def __init__(self, tag: int, calls: list) -> None:
        self.tag, self.calls = tag, calls

    def logits(self, batch, rows):
        self.calls.append((self.tag, list(rows)))
        values = torch.tensor([100.0 * self.tag + row for row in rows])
        return values[:, None, None].expand(-1, SEQ, VOCAB).to(torch.float64)  # cast back to the batch's

    def answers(self, batch, rows, max_new_tokens):
        self.calls.append((self.tag, list(rows)))
        return [f"{self.tag} {row}" for row in rows]


def encoded(rows: int) -> dict[str, torch.Tensor]:
    ids = torch.arange(rows)[:, None].repeat(1, SEQ)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "prompt_length": torch.full((rows,), SEQ),
    }


def text_only_original(calls: list):
    """The original model as `RoutedAnswers` uses it for answers: one sample at a time, no image inputs."""

    def generate_answers(single, max_new_tokens):
        calls.append(("original", [int(single["input_ids"][0, 0])]))
        return [f"original {int(single['input_ids'][0, 0])}"]

    layout = SimpleNamespace(image_inputs=("pixel_values",))
    model = SimpleNamespace(config=None)  # select_sample reads its config only for images
    return SimpleNamespace(layout=layout, model=model, generate_answers=generate_answers)


def test_routed_answers_merge_each_row_from_its_path_and_call_each_path_once():
    calls: list = []
    shared, own = RecordingPath(1, calls), RecordingPath(2, calls)
    paths = {0: shared, 2: shared, 1: own}  # edits 0 and 2 share a path, as all of LDKE's do
    base = torch.randn(5, SEQ, VOCAB)
    untouched = base.clone()
    chosen = [2, None, 0, 2, 1]
    model = RoutedAnswers(FixedRoutes(base, chosen), paths.__getitem__, text_only_original(calls))

    merged = model(encoded(5))
    assert calls == [(1, [0, 2, 3]), (2, [4])]  # one call per path, its rows in order
    expected = [100.0, None, 102.0, 103.0, 204.0]
    for row, value in enumerate(expected):
        if value is None:
            assert torch.equal(merged[row], base[row])
        else:
            assert torch.equal(merged[row], torch.full((SEQ, VOCAB), value))
    assert merged.dtype == base.dtype and torch.equal(base, untouched)  # merged into a copy

    calls.clear()
    answers = model.generate_answers(encoded(5), max_new_tokens=2)
    assert answers == ["1 0", "original 1", "1 2", "1 3", "2 4"]
    assert calls == [("original", [1]), (1, [0, 2, 3]), (2, [4])]
