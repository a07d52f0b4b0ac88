"""Model surgery of UniKE on tiny BLIP-2 OPT, MiniGPT-4-style (gated LLaMA) and LLaVA models."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn.modules import module as module_hooks

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.latent import FixedGate, KnowledgeInjection, LayerKnowledge
from unike_pl.editing.neurons import NeuronBank, new_patch
from unike_pl.editing.tail import TailRunner
from unike_pl.editing.unrelated import UnrelatedInputs
from unike_pl.knowledge.contrastive import semantic_loss, truthfulness_loss
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.mining import extract_states

MODELS = ("blip2", "minigpt4", "llava", "qwen2vl")
RED = Image.new("RGB", (40, 40), (220, 30, 30))
GREY = Image.new("RGB", (40, 40), (90, 90, 90))


@pytest.fixture(scope="module")
def backbones(tiny_models):
    return {
        name: load_backbone(BackboneConfig(str(tiny_models[name]), local_files_only=True)) for name in MODELS
    }


def edit_inputs(backbone):
    return backbone.encoder.encode([Example("what color is the circle?", "purple", RED)])


def probe_inputs(backbone):
    return backbone.encoder.encode(
        [
            Example("how many squares are there?", "two", GREY),
            Example("what shape is shown?", "a triangle", RED),
        ]
    )


def random_knowledge(backbone, layers, count=30, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = backbone.hidden_size
    return {
        layer: LayerKnowledge(
            torch.randn(count, hidden, generator=generator), torch.randn(count, hidden, generator=generator)
        )
        for layer in layers
    }


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def global_hook_count() -> int:
    return len(module_hooks._global_forward_hooks) + len(module_hooks._global_forward_pre_hooks)


@pytest.mark.parametrize("name", MODELS)
def test_tail_replays_the_full_forward(name, backbones):
    backbone = backbones[name]
    inputs = probe_inputs(backbone)
    tail = TailRunner(backbone, backbone.num_layers - 2)
    assert torch.allclose(tail.logits(tail.capture(inputs)), backbone(inputs), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_zero_initialised_neurons_leave_logits_unchanged(name, backbones):
    backbone = backbones[name]
    inputs = probe_inputs(backbone)
    before, hooks = backbone(inputs), hook_count(backbone.model)
    bank = NeuronBank(backbone)
    for layer in backbone.last_layers(2):
        patch = new_patch(backbone, layer, 5)
        patch.init_keys(torch.randn(patch.keys.shape[1]), noise=0.1)  # firing keys, zero values
        bank.add(layer, patch)
    with bank.attached():
        assert torch.equal(backbone(inputs), before)
        bank.latest()[backbone.num_layers - 1].values.data.normal_()
        assert not torch.allclose(backbone(inputs), before)
    assert hook_count(backbone.model) == hooks


def with_edit_knowledge(backbone, layers, gate, edit=None):
    """An injection over a random memory with one edit's knowledge active (the gate decides who reads it)."""
    injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, gate)
    edit = edit if edit is not None else edit_inputs(backbone)
    injection.add(injection.knowledge_of(extract_states(backbone, layers, edit)))
    return injection


def unrelated_inputs(backbone, layers, count=6):
    """Unrelated questions with their stored (unedited) states, as the editing module builds them."""
    questions = [Example(f"what is thing {i}?", "grey", GREY if i % 2 else None) for i in range(count)]
    states = {layer: {} for layer in layers}
    for image in (True, False):
        rows = [i for i, q in enumerate(questions) if (q.image is not None) == image]
        read = extract_states(backbone, layers, backbone.encoder.encode([questions[i] for i in rows]))
        for layer in layers:
            for kind in ("sem", "ffn"):
                states[layer].setdefault(kind, torch.zeros(count, backbone.hidden_size))[rows] = read[layer][
                    kind
                ]
    return UnrelatedInputs(
        backbone,
        {layer: states[layer]["sem"] for layer in layers},
        {layer: states[layer]["ffn"] for layer in layers},
        lambda rows: [questions[i] for i in rows],
        batch_size=2,
    )


@pytest.mark.parametrize("name", MODELS)
def test_an_undone_edit_restores_the_model_exactly(name, backbones):
    backbone = backbones[name]
    layers = backbone.last_layers(2)
    probe = probe_inputs(backbone)
    before = backbone(probe)  # transformers adds hooks of its own at the first forward: count after it
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    hooks, global_hooks = hook_count(backbone.model), global_hook_count()
    injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, FixedGate(0.5))
    intrinsic = IntrinsicConfig(neurons=4, max_steps=3, learning_rate=0.1)
    editor = UniKEEditor(backbone, layers, intrinsic, injection, None, unrelated_inputs(backbone, layers))
    editor.edit(edit_inputs(backbone))
    with editor.active():
        assert not torch.allclose(backbone(probe), before)  # the edit did something
    editor.restore()
    assert hook_count(backbone.model) == hooks and global_hook_count() == global_hooks
    after = backbone.model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert torch.equal(backbone(probe), before)
    assert not editor.bank.patches and not editor.injection.edits


@pytest.mark.parametrize("name", ["blip2", "minigpt4"])
@pytest.mark.parametrize("latent", [False, True])
def test_the_fast_tail_trains_like_the_full_model(name, latent, backbones):
    backbone = backbones[name]
    layers = backbone.last_layers(3)
    intrinsic = IntrinsicConfig(neurons=4, max_steps=4, learning_rate=0.05, layers=2)
    probe, results = probe_inputs(backbone), []
    for fast in (True, False):
        # With latent knowledge the tail starts at its first layer, where the gate is read.
        injection = (
            KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, FixedGate(0.5))
            if latent
            else None
        )
        unrelated = unrelated_inputs(backbone, layers)
        editor = UniKEEditor(
            backbone, layers, intrinsic, injection, None, unrelated, fast_tail=fast, seed=3,
            neuron_layers=layers[1:],
        )  # fmt: skip
        report = editor.edit(edit_inputs(backbone))
        with editor.active():
            results.append((report.steps, backbone(probe)))
        editor.restore()
    (steps_fast, logits_fast), (steps_full, logits_full) = results
    assert steps_fast == steps_full
    assert torch.allclose(logits_fast, logits_full, atol=1e-4)


def test_an_edit_draws_the_same_numbers_whatever_came_before_it(backbones):
    """The key jitter (and a learned W_ζ's start) comes from the seed and the edit alone, so another order,
    another rank or a resumed run gives the edit the same neurons; another seed gives other ones."""
    backbone = backbones["blip2"]
    layers = backbone.last_layers(2)
    intrinsic = IntrinsicConfig(neurons=4, key_noise=0.1)
    intrinsic.max_steps = 0  # the keys as drawn (no run may set this: the config refuses it)
    other = backbone.encoder.encode([Example("how many squares are there?", "two", GREY)])

    def keys_of_the_edit(first, seed=0):
        editor = UniKEEditor(backbone, layers, intrinsic, None, None, None, seed=seed)
        if first is not None:
            editor.edit(first)
        editor.edit(edit_inputs(backbone))
        keys = [patches[-1].keys.detach().clone() for patches in editor.bank.patches.values()]
        editor.restore()
        return keys

    alone, after_another = keys_of_the_edit(None), keys_of_the_edit(other)
    assert all(torch.equal(a, b) for a, b in zip(alone, after_another, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(alone, keys_of_the_edit(None, seed=1), strict=True))


def test_the_embedded_model_learns_an_edit_and_stops_after_it():
    """On the shipped world model (random tiny models cannot express two different tokens at adjacent
    positions): the edited model answers the new target by greedy decoding, then stops."""
    backbone = load_backbone(BackboneConfig("checkpoints/world-blip2", local_files_only=True))
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    question = "What colour are the objects?"
    before = backbone.generate_answers(backbone.encoder.encode([Example(question, "red", image)]), 4)
    target = "purple" if before != ["purple"] else "green"
    inputs = backbone.encoder.encode([Example(question, target, image)])
    layers = backbone.last_layers(4)
    editor = UniKEEditor(backbone, layers, IntrinsicConfig(max_steps=20), None, None, None)
    report = editor.edit(inputs)
    with editor.active():
        assert backbone.generate_answers(inputs, 4) == [target]
    assert report.steps > 0
    editor.restore()
    assert backbone.generate_answers(inputs, 4) == before


@pytest.mark.parametrize("name", MODELS)
def test_knowledge_weight_zero_changes_nothing(name, backbones):
    backbone = backbones[name]
    layers = backbone.last_layers(2)
    probe = probe_inputs(backbone)
    before = backbone(probe)
    for alpha, same in ((0.0, True), (1.0, False)):
        with with_edit_knowledge(backbone, layers, FixedGate(alpha)).attached():
            after = backbone(probe)
        assert torch.equal(after, before) == same


def test_edit_states_are_read_at_the_question_and_sequence_end(backbones):
    backbone = backbones["blip2"]
    layer = backbone.num_layers - 1
    inputs = probe_inputs(backbone)
    states = extract_states(backbone, [layer], inputs)[layer]
    single = extract_states(
        backbone, [layer], backbone.encoder.encode([Example("how many squares are there?", "two", GREY)])
    )[layer]
    # Padding does not leak into the states of the shorter sample.
    assert torch.allclose(states["sem"][0], single["sem"][0], atol=1e-5)
    assert torch.allclose(states["last"][0], single["last"][0], atol=1e-5)
    assert not torch.allclose(states["sem"][0], states["last"][0])


def planted_triplets(count: int, hidden: int, seed: int):
    """States whose positives and negatives differ along one planted truthful direction (the same for
    every seed), and whose question states sit near their own triplet's answers."""
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(12345))
    generator = torch.Generator().manual_seed(seed)
    topic = torch.randn(count, hidden, generator=generator)
    noise = lambda: 0.3 * torch.randn(count, hidden, generator=generator)  # noqa: E731
    return topic + noise(), topic + direction + noise(), topic - direction + noise()


def test_contrastive_losses_fall_on_a_planted_truthful_direction():
    torch.manual_seed(0)
    sem, pos, neg = planted_triplets(64, 32, seed=1)
    encoders = DisentangledEncoders([0], hidden=32, dim=16)
    optimizer = torch.optim.Adam(encoders.parameters(), lr=3e-3)

    def losses():
        truth = truthfulness_loss(encoders.encode_truth(0, pos), encoders.encode_truth(0, neg), 0.1)
        semantic = semantic_loss(
            encoders.encode_semantic(0, sem),
            encoders.encode_semantic(0, pos),
            encoders.encode_semantic(0, neg),
            0.1,
        )
        return truth, semantic

    first = [float(x.detach()) for x in losses()]
    for _ in range(150):
        truth, semantic = losses()
        optimizer.zero_grad()
        (truth + semantic).backward()
        optimizer.step()
    last = [float(x.detach()) for x in losses()]
    # Supervised InfoNCE cannot go below log(number of same-class partners): 63 here.
    floor = math.log(63)
    assert last[0] - floor < 0.3 * (first[0] - floor) and last[1] < 0.7 * first[1]
    # ζ separates held-out triplets with the same planted direction.
    _, pos_test, neg_test = planted_triplets(64, 32, seed=2)  # same direction, new topics and noise
    midpoint = encoders.fit_directions(pos[:, None], neg[:, None])[0]
    zeta = encoders.direction(0)
    with torch.no_grad():
        right = ((encoders.encode_truth(0, pos_test) - midpoint) @ zeta > 0).float().mean()
        right += ((encoders.encode_truth(0, neg_test) - midpoint) @ zeta <= 0).float().mean()
    assert right / 2 > 0.95


def test_semantic_relevance_is_a_clamped_cosine():
    encoders = DisentangledEncoders([3], hidden=8, dim=4)
    states = torch.randn(5, 8)
    alpha = encoders.relevance(3, states, states)  # (queries, keys)
    assert alpha.shape == (5, 5) and torch.allclose(alpha.diagonal(), torch.ones(5), atol=1e-5)
    opposite = encoders.relevance(3, states, -states)
    assert torch.all((opposite >= 0) & (opposite <= 1))


def test_the_gate_is_read_once_per_edit_through_the_fast_tail(backbones, monkeypatch):
    """Every training step replays the same frozen prefix: the gate's reading there (a replay of the
    edited layers without edits) is computed once, not once per step; the full path reads it every step."""
    from unike_pl.editing import latent

    backbone = backbones["blip2"]
    layers = backbone.last_layers(2)
    reads = []
    original = latent.unedited_attention_inputs
    monkeypatch.setattr(latent, "unedited_attention_inputs", lambda *a: reads.append(1) or original(*a))
    counts = {}
    for fast in (True, False):
        reads.clear()
        injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, FixedGate(0.5))
        intrinsic = IntrinsicConfig(neurons=4, max_steps=8, learning_rate=0.05, stop_early=False)
        editor = UniKEEditor(backbone, layers, intrinsic, injection, None, None, fast_tail=fast)
        editor.edit(edit_inputs(backbone))
        editor.restore()
        counts[fast] = len(reads)
    assert counts[True] <= 2 < 8 <= counts[False]
