"""LDKE's Disentanglement Classifier (features, loss, routing) and LDKE end to end on a small world."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from tests.helpers import shipped_config, write_config
from tests.test_unike import MEMORY_LIMIT, edit_config, encoders, read_memory  # noqa: F401
from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.backbones.encoding import select_sample
from unike_pl.cli import main
from unike_pl.editing.base import Editor, EditReport
from unike_pl.ldke.router import IN_SCOPE, RoutedEditor, RouterConfig, router_features, routing_loss
from unike_pl.metrics import names, read_results

RED, BLUE = Image.new("RGB", (40, 40), (220, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 220))


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


def test_router_features_keep_image_and_text_apart(backbone):
    batch = backbone.encoder.encode(
        [Example("what color is it?", "red", RED), Example("what color is it?", "red", BLUE)]
    )
    text_only = backbone.encoder.encode([Example("what is the capital of France?", "Paris", None)])
    hidden = backbone.hidden_size
    _, images = router_features(backbone, batch, -1)
    _, text = router_features(backbone, text_only, -1)
    assert images.shape == (2, 3 * hidden + 1) and images[:, -1].tolist() == [1.0, 1.0]
    assert not torch.allclose(images[0, :hidden], images[1, :hidden])  # other picture, other image part
    assert text[0, -1] == 0 and torch.equal(text[0, :hidden], torch.zeros(hidden))


class SameInput(nn.Module):
    """In an edit's scope exactly when the input's features are the edit's."""

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def logits(self, inputs: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.cdist(inputs, edits) < 1e-3, 10.0, -10.0)


class ShiftedModel:
    def __init__(self, backbone):
        self.backbone = backbone

    def __call__(self, batch):
        return self.backbone(batch) + 1.0

    def generate_answers(self, batch, max_new_tokens=16):
        return ["edited"] * len(batch["input_ids"])


class ShiftingEditor(Editor):
    """Edits shift every logit by one: easy to tell which path answered. Counts how often its edited model
    is opened."""

    def __init__(self, backbone):
        self.backbone, self.edits, self.opened = backbone, 0, 0

    def edit(self, inputs):
        self.edits += 1
        return EditReport(0, 0.0, True)

    def restore(self):
        self.edits = 0

    @contextmanager
    def answering(self) -> Iterator[ShiftedModel]:
        self.opened += 1
        yield ShiftedModel(self.backbone)


def test_routed_editor_answers_in_scope_inputs_with_the_edited_model(backbone):
    batch = backbone.encoder.encode(
        [Example("what color is it?", "red", RED), Example("what shape is it?", "round", RED)],
        keep_examples=True,
    )
    editor = RoutedEditor(ShiftingEditor(backbone), SameInput(), RouterConfig(feature_layer=-1))
    original = backbone(batch)
    with editor.answering() as model:
        assert torch.equal(model(batch), original)  # no edit yet: the original model answers
    editor.edit(select_sample(batch, 0, backbone.layout, backbone.model.config))
    with editor.answering() as model:
        routed = model(batch)
        answers = model.generate_answers(batch, 3)
    assert torch.allclose(routed[0], original[0] + 1) and torch.equal(routed[1], original[1])
    assert answers[0] == "edited" and answers[1] == backbone.generate_answers(batch, 3)[1]
    editor.restore()
    assert editor.inner.edits == 0 and editor.router.keys == []


def test_routed_answers_equal_each_samples_own_path_exactly(backbone):
    """With two edits stored, the rows in their scope are the edited model's on the whole batch and the row
    out of it the original model's, to the bit; the edited model answers both edits' rows in one call."""
    batch = backbone.encoder.encode(
        [
            Example("what color is it?", "red", RED),
            Example("what shape is it?", "round", RED),
            Example("how many are there?", "two", BLUE),
        ],
        keep_examples=True,
    )
    inner = ShiftingEditor(backbone)
    editor = RoutedEditor(inner, SameInput(), RouterConfig(feature_layer=-1))
    for row in (2, 0):
        editor.edit(select_sample(batch, row, backbone.layout, backbone.model.config))
    assert editor.router.route(batch)[1] == [1, None, 0]
    with editor.answering() as model:
        routed = model(batch)
        answers = model.generate_answers(batch, 3)
    assert inner.opened == 2  # one forward and one generation for both edits
    edited, original = ShiftedModel(backbone)(batch), backbone(batch)
    assert torch.equal(routed[0], edited[0]) and torch.equal(routed[2], edited[2])
    assert torch.equal(routed[1], original[1])
    alone = select_sample(batch, 1, backbone.layout, backbone.model.config)
    assert answers == ["edited", backbone.generate_answers(alone, 3)[0], "edited"]


class PerfectRouter(nn.Module):
    """Knows the answer: scores each input's own record's edit by whether its kind is in scope."""

    def __init__(self, kind: str, sign: float = 1.0):
        super().__init__()
        self.kind, self.sign = kind, sign

    def logits(self, inputs, edits):
        own = inputs[:, :1] == edits[:, 0].unsqueeze(0)  # feature 0 holds the record
        inside = own if self.kind in IN_SCOPE else torch.zeros_like(own)
        return self.sign * torch.where(inside, 20.0, -20.0)


@pytest.mark.parametrize("kind", [names.REPHRASE, names.HARD_NEIGHBOURS])
def test_routing_loss_rewards_right_routes_and_punishes_wrong_ones(kind):
    edits = torch.arange(3.0).unsqueeze(1).repeat(1, 5)
    rows = torch.tensor([0.0, 0.0, 1.0, 2.0]).unsqueeze(1).repeat(1, 5)
    inputs = {kind: (rows, rows[:, 0].long())}
    right = routing_loss(PerfectRouter(kind), edits, inputs, threshold=0.5)
    assert float(right.loss) < 1e-6 and bool(right.routed[kind].all()) and bool(right.other_edits.all())
    assert len(right.routed[kind]) == 4 and len(right.other_edits) == 8
    wrong = routing_loss(PerfectRouter(kind, sign=-1.0), edits, inputs, threshold=0.5)
    assert float(wrong.loss) > 5 and not bool(wrong.routed[kind].any()) and not bool(wrong.other_edits.any())


def router_config(root, world, model):
    settings = shipped_config("ldke_router.yaml", root, world, model)
    settings["trainer"]["max_epochs"] = 1
    settings["data"]["init_args"].update(limit=8, train_batch_size=4)
    return write_config(settings, root / "router.yaml")


def ldke_config(root, world, model, encoders, router):  # noqa: F811
    settings = yaml.safe_load(
        edit_config(root, world, model, memory={**read_memory(encoders), **MEMORY_LIMIT}).read_text()
    )
    settings["model"]["class_path"] = "unike_pl.modules.LDKEModule"
    settings["model"]["init_args"].update(
        localization={"scorer": "attribution", "layers": 2}, router_checkpoint=str(router)
    )
    return write_config(settings, root / "ldke.yaml")


def test_ldke_trains_its_router_then_edits_localized_and_routed(tmp_path, encoders, small_world, world_model):  # noqa: F811
    main(["fit", "--config", str(router_config(tmp_path, small_world, world_model))])
    router = tmp_path / "runs" / "ldke_router" / "checkpoints" / "router.ckpt"
    state = torch.load(router, weights_only=False)["state_dict"]
    assert state and all(key.startswith("classifier.") for key in state)  # the backbone is not saved

    config = ldke_config(tmp_path, small_world, world_model, encoders, router)
    ckpt = str(encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt")
    main(["validate", "--config", str(config), "--ckpt_path", ckpt])
    scores = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["scores"]
    for metric in names.EDIT_METRICS:  # the two LDKE metrics included: the world has neighbours
        assert 0 <= scores[names.stage_key("val", metric)] <= 100
    stored = list((tmp_path / "runs" / "edit_vqa" / "edits").glob("records_*.json"))
    assert len(stored) == 3
    for file in stored:
        for edit in json.loads(file.read_text())["edits"]:
            assert len(edit["layers"]) == 2 and set(edit["layers"]) <= {0, 1, 2, 3}


def test_ldke_names_a_missing_router_checkpoint(tmp_path, encoders, small_world, world_model):  # noqa: F811
    config = ldke_config(tmp_path, small_world, world_model, encoders, tmp_path / "no_router.ckpt")
    ckpt = str(encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt")
    with pytest.raises(FileNotFoundError, match="no_router.ckpt.*ldke_router.yaml"):
        main(["validate", "--config", str(config), "--ckpt_path", ckpt])
