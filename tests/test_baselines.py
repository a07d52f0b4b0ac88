"""The FT and T-Patcher baselines on tiny models: they edit, and they undo exactly (IKE: test_ike.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.finetune import FineTuneConfig, FineTuneEditor
from unike_pl.editing.unrelated import UnrelatedInputs
from unike_pl.metrics.scorers import exact_match
from unike_pl.modules.finetune import FineTuneModule

RED = Image.new("RGB", (40, 40), (220, 30, 30))
GREY = Image.new("RGB", (40, 40), (90, 90, 90))


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


def encode(backbone, *examples):
    return backbone.encoder.encode(list(examples), keep_examples=True)


def edit_example():
    return Example("what color is the circle?", "purple", RED)


def probes(backbone):
    return encode(
        backbone,
        Example("how many squares are there?", "two", GREY),
        Example("what shape is it?", "a star", RED),
    )


def snapshot(backbone):
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def assert_unchanged(backbone, state, probe, before):
    after = backbone.model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert torch.equal(backbone(probe), before)


def test_fine_tuning_learns_the_edit_and_restore_copies_the_weights_back(backbone):
    state, probe = snapshot(backbone), probes(backbone)
    before = backbone(probe)
    config = FineTuneConfig(layers=1, learning_rate=0.05, max_steps=30)
    inputs = encode(backbone, edit_example())
    fixed = FineTuneEditor(backbone, config)
    report = fixed.edit(inputs)
    assert report.success and report.steps == 30  # a fixed number of steps by default
    fixed.restore()
    editor = FineTuneEditor(backbone, replace(config, stop_early=True))
    report = editor.edit(inputs)
    assert report.success and 0 < report.steps < 30
    with editor.answering() as model, torch.no_grad():
        assert bool(exact_match(model(inputs), inputs["labels"]).all())
        assert not torch.equal(model(probe), before)
    editor.restore()
    assert_unchanged(backbone, state, probe, before)


def test_fine_tuning_trains_only_the_last_layers(backbone):
    editor = FineTuneEditor(backbone, FineTuneConfig(layers=1, max_steps=2, stop_early=False))
    earlier = {k: v.clone() for k, v in backbone.layers[0].state_dict().items()}
    editor.edit(encode(backbone, edit_example()))
    assert all(torch.equal(v, earlier[k]) for k, v in backbone.layers[0].state_dict().items())
    assert any(not torch.equal(p, o) for p, o in zip(editor.parameters, editor.original, strict=True))
    editor.restore()


def test_t_patcher_puts_its_neurons_in_the_last_layer_only(backbone):
    layers = backbone.last_layers(2)
    memory = {layer: torch.randn(8, backbone.hidden_size) for layer in layers}
    config = IntrinsicConfig(neurons=1, layers=1, max_steps=3)
    editor = UniKEEditor(
        backbone,
        layers,
        config,
        None,
        None,
        UnrelatedInputs(backbone, memory, memory),
        neuron_layers=layers[-1:],
    )
    editor.edit(encode(backbone, edit_example()))
    assert {layer for layer, patches in editor.bank.patches.items() if patches} == {layers[-1]}
    assert editor.bank.latest()[layers[-1]].keys.shape[0] == 1
    editor.restore()


def test_a_checkpoint_of_another_method_is_refused_not_ignored(tiny_models):
    """Checkpoints load without the backbone (not strictly), so FT given UniKE's encoders would have
    dropped them while Lightning printed "Loaded model weights"; it names them and their module."""
    module = FineTuneModule(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))
    checkpoint = {
        "state_dict": {"encoders.zeta": torch.zeros(2, 4), "encoders.gate_threshold": torch.tensor(0.5)},
        "hyper_parameters": {"_class_path": "unike_pl.modules.DisentangleModule"},
    }
    with pytest.raises(
        ValueError, match=r"FineTuneModule has no place for \(encoders\.\*\).*DisentangleModule"
    ):
        module.on_load_checkpoint(checkpoint)
    module.on_load_checkpoint({"state_dict": {}, "hyper_parameters": {}})  # nothing foreign: fine
