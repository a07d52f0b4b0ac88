"""UniKE's collaboration, each part with a check that fails if the part did nothing: per-edit knowledge sets,
a gate that closes (read from unedited states), ζ whose direction matters, T-Patcher's losses and the
memory loss on the states the neurons see."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.test_editing import (
    GREY,
    RED,
    edit_inputs,
    planted_triplets,
    probe_inputs,
    random_knowledge,
    unrelated_inputs,
    with_edit_knowledge,
)
from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.editing.editor import FixedShift, IntrinsicConfig, UniKEEditor
from unike_pl.editing.latent import FixedGate, KnowledgeInjection, SemanticGate
from unike_pl.editing.neurons import NeuronBank, new_patch
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.gate import fit_threshold
from unike_pl.knowledge.mining import extract_states
from unike_pl.knowledge.states import at_positions, layer_inputs
from unike_pl.losses import neuron_margin_losses


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


class CosineEncoders:
    """Stands in for trained encoders: relevance is the raw clamped cosine, the threshold is given."""

    def __init__(self, threshold: float) -> None:
        self.gate_threshold = torch.tensor(threshold)

    def relevance(self, layer, knowledge, queries):
        return (F.normalize(queries, dim=-1) @ F.normalize(knowledge, dim=-1).T).clamp(0, 1)


# --- knowledge belongs to the edit ---------------------------------------------------------------------


def test_an_edits_knowledge_is_retrieved_once_and_read_by_every_input(backbone, monkeypatch):
    layers = backbone.last_layers(2)
    injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, FixedGate(1.0))
    edit = edit_inputs(backbone)
    states = extract_states(backbone, layers, edit)
    injection.add(injection.knowledge_of(states))
    for layer in layers:
        knowledge = injection.edits[0][layer]
        _, ids = injection.indexes[layer].search(states[layer]["sem"], 4)
        assert torch.equal(knowledge.states[:4], injection.memory[layer].values[ids[0]])
        assert torch.equal(knowledge.states[4], states[layer]["last"][0])  # the edit's own positive state
        assert torch.equal(knowledge.key, states[layer]["last"][0])

    def no_retrieval(*args, **kwargs):
        raise AssertionError("knowledge was retrieved for a scored input")

    read: list[torch.Tensor] = []
    attend = injection.attend
    monkeypatch.setattr(injection, "attend", lambda layer, s, k: read.append(k) or attend(layer, s, k))
    for index in injection.indexes.values():
        monkeypatch.setattr(index, "search", no_retrieval)
    before = backbone(probe_inputs(backbone))
    with injection.attached():
        after = backbone(probe_inputs(backbone))
        backbone(edit)
    assert not torch.allclose(after, before)
    # Every row of every scored batch read exactly the edit's set.
    assert read and all(
        torch.equal(row, injection.edits[0][layers[i % 2]].states) for i, k in enumerate(read) for row in k
    )


def test_each_input_reads_the_set_of_its_most_relevant_edit(backbone):
    layers = backbone.last_layers(2)
    injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, FixedGate(1.0))
    for example in (
        Example("what color is the circle?", "purple", RED),
        Example("how many squares?", "two", GREY),
    ):
        edit = backbone.encoder.encode([example])
        injection.add(injection.knowledge_of(extract_states(backbone, layers, edit)))
    # The edits' own question states, as queries: each picks its own edit.
    queries = {layer: torch.stack([edit[layer].key for edit in injection.edits]) for layer in layers}
    assert injection.read_gate(queries).chosen.tolist() == [0, 1]


# --- a gate that can close -----------------------------------------------------------------------------


def test_the_gate_opens_for_inputs_near_the_edit_and_closes_for_unrelated_ones(backbone):
    layers = backbone.last_layers(2)
    hidden = backbone.hidden_size
    generator = torch.Generator().manual_seed(0)
    key = torch.randn(hidden, generator=generator)
    near = key + 0.1 * torch.randn(hidden, generator=generator)
    unrelated = torch.randn(hidden, generator=generator)
    unrelated -= (unrelated @ key) / (key @ key) * key  # orthogonal to the edit: relevance 0
    for value, expected_in in (("one", 1.0), ("relevance", float(F.cosine_similarity(near, key, dim=0)))):
        gate = SemanticGate(CosineEncoders(0.5), value=value)
        injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, gate)
        injection.add(
            injection.knowledge_of({layer: {"sem": key[None], "last": key[None]} for layer in layers})
        )
        reading = injection.read_gate({layer: torch.stack([near, unrelated]) for layer in layers})
        assert reading.alpha[0].item() == pytest.approx(expected_in, abs=1e-5)
        assert reading.alpha[1].item() == 0.0


def test_a_closed_gate_leaves_the_input_exactly_as_the_unedited_model(backbone):
    layers = backbone.last_layers(2)
    probe = probe_inputs(backbone)
    before = backbone(probe)
    for threshold, unchanged in ((1.01, True), (0.0, False)):
        injection = with_edit_knowledge(backbone, layers, SemanticGate(CosineEncoders(threshold)))
        with injection.attached():
            after = backbone(probe)
        assert torch.equal(after, before) == unchanged
        assert bool((injection.last_reading.alpha == 0).all()) == unchanged


def test_the_gate_reads_the_unedited_states_even_when_the_edit_moved_them(backbone):
    layers = backbone.last_layers(2)
    edit, probe = edit_inputs(backbone), probe_inputs(backbone)
    injection = with_edit_knowledge(backbone, layers, SemanticGate(CosineEncoders(0.0)))
    unedited = extract_states(backbone, layers, probe)
    expected = injection.read_gate({layer: unedited[layer]["sem"] for layer in layers})
    bank = NeuronBank(backbone)
    patch = new_patch(backbone, layers[0], 4)  # fires everywhere and moves every later state
    patch.init_keys(torch.ones(patch.keys.shape[1]), noise=0.5)
    patch.key_bias.data.fill_(5.0)
    patch.values.data.normal_(generator=torch.Generator().manual_seed(1))
    bank.add(layers[0], patch)
    with bank.attached(), injection.attached():
        moved = backbone(probe)
        reading = injection.last_reading
    with injection.attached():
        assert not torch.allclose(backbone(probe), moved)  # the neurons did move the states
    assert torch.allclose(reading.alpha, expected.alpha, atol=1e-5)
    assert torch.equal(reading.chosen, expected.chosen)
    del edit


def test_the_threshold_is_the_one_that_best_separates_in_scope_pairs():
    alpha = torch.tensor([0.9, 0.8, 0.7, 0.45, 0.3, 0.2, 0.1, 0.6])
    in_scope = torch.tensor([True, True, True, False, False, False, False, False])
    fit = fit_threshold(alpha, in_scope)
    assert 0.6 < fit.threshold <= 0.7
    assert fit.in_scope_pass == 1.0 and fit.out_of_scope_pass == 0.0
    with pytest.raises(ValueError, match="both in-scope and out-of-scope"):
        fit_threshold(alpha, torch.ones(8, dtype=torch.bool))


# --- ζ whose direction matters --------------------------------------------------------------------------


def trained_planted_encoders():
    torch.manual_seed(0)
    _, pos, neg = planted_triplets(128, 32, seed=1)
    encoders = DisentangledEncoders([0], hidden=32, dim=16)
    optimizer = torch.optim.Adam(encoders.truth.parameters(), lr=3e-3)
    from unike_pl.knowledge.contrastive import truthfulness_loss

    for _ in range(150):
        loss = truthfulness_loss(encoders.encode_truth(0, pos), encoders.encode_truth(0, neg), 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoders.fit_directions(pos[:, None], neg[:, None])
    return encoders


def test_the_fitted_map_carries_zeta_back_to_the_planted_hidden_direction():
    encoders = trained_planted_encoders()
    planted = torch.randn(32, generator=torch.Generator().manual_seed(12345))  # planted_triplets' direction
    truthful = encoders.value_direction(0, "truthful")
    random = encoders.value_direction(0, "random", seed=0)
    assert F.cosine_similarity(truthful, planted, dim=0) > 0.9
    assert F.cosine_similarity(random, planted, dim=0) < 0.5
    # The random control has ζ's norm in the truthfulness space and another direction.
    assert encoders.direction(0, "random").norm().item() == pytest.approx(encoders.direction(0).norm().item())
    assert F.cosine_similarity(encoders.direction(0, "random"), encoders.direction(0), dim=0) < 0.9


def test_a_random_zeta_of_the_same_norm_moves_the_new_values_elsewhere(backbone):
    layer = backbone.num_layers - 1
    probe = probe_inputs(backbone)
    outputs = []
    for seed in (0, 1):
        direction = torch.randn(backbone.hidden_size, generator=torch.Generator().manual_seed(seed))
        bank = NeuronBank(backbone)
        patch = new_patch(backbone, layer, 3)
        patch.init_keys(torch.ones(patch.keys.shape[1]), noise=0.1)
        patch.key_bias.data.fill_(3.0)  # firing; the values are zero, so only β·ζ' moves the output
        patch.value_shift = FixedShift(direction / direction.norm(), beta=2.0)
        bank.add(layer, patch)
        with bank.attached():
            outputs.append(backbone(probe))
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_unike_refuses_an_unknown_zeta_kind():
    with pytest.raises(ValueError, match="intrinsic.zeta"):
        IntrinsicConfig(zeta="sideways")


# --- T-Patcher's losses, on the states the neurons see ---------------------------------------------------


def test_t_patcher_keys_start_at_activation_one_on_the_edit():
    from unike_pl.editing.neurons import NeuronPatch

    patch = NeuronPatch(8, 8, 3, gated=False, activation=torch.nn.GELU())
    query = torch.randn(8) * 7
    patch.init_keys(query, noise=0.0)
    assert torch.allclose(patch.pre_activation(query), torch.ones(3), atol=1e-5)


def test_the_margin_losses_count_only_broken_constraints():
    on_edit = torch.tensor([[2.0, 0.5]])  # neuron 1 is below the activation margin 1 by 0.5
    on_memory = torch.tensor([[-2.0, -2.0], [-0.5, -3.0]])  # row 1 neuron 0 is above −1 by 0.5
    activation, memory = neuron_margin_losses(on_edit, on_memory, 1.0, 1.0, 0.0)
    assert activation.item() == pytest.approx(0.5)  # mean over the one broken entry, not over both
    assert memory.item() == pytest.approx(0.5)
    _, with_gap = neuron_margin_losses(on_edit, on_memory, 1.0, 1.0, 3.0)
    # Gap 3: each neuron's memory activation 3 below its edit activation; broken by 0.5 twice
    # (neuron 1 on row 0: −2 − 0.5 + 3; neuron 0 on row 1: −0.5 − 2 + 3).
    assert with_gap.item() == pytest.approx(0.5 + 0.5)
    zero_activation, zero_memory = neuron_margin_losses(on_edit + 5, on_memory - 5, 1.0, 1.0, 3.0)
    assert zero_activation.item() == 0.0 and zero_memory.item() == 0.0


def test_the_memory_loss_sees_the_unrelated_inputs_as_the_neurons_do(backbone):
    layers = backbone.last_layers(2)
    unrelated = unrelated_inputs(backbone, layers)
    stored = {layer: states.clone() for layer, states in unrelated.ffn.items()}
    for gate, reached in ((FixedGate(0.5), True), (SemanticGate(CosineEncoders(1.01)), False)):
        injection = with_edit_knowledge(backbone, layers, gate)
        seen, count = unrelated.seen(injection, injection.attached)
        if not reached:  # the gate keeps the knowledge out: the stored states are what the neurons see
            assert count == 0 and all(torch.equal(seen[layer], stored[layer]) for layer in layers)
            continue
        assert count == 6
        order = unrelated.reached(injection).tolist()  # re-read rows come in this order
        for image in (True, False):
            rows = [i for i in range(6) if (i % 2 == 1) == image]
            examples = unrelated.examples(rows)
            encoded = backbone.encoder.encode(examples)
            with injection.attached(), layer_inputs(backbone, layers) as captured, torch.no_grad():
                backbone(encoded)
            for layer in layers:
                direct = at_positions(captured["ffn"][layer], encoded["prompt_length"] - 1)
                assert torch.allclose(seen[layer][[order.index(row) for row in rows]], direct, atol=1e-5)
    unrelated.reread_limit = 2  # the reached questions beyond the limit leave the margin loss
    injection = with_edit_knowledge(backbone, layers, FixedGate(0.5))
    seen, count = unrelated.seen(injection, injection.attached)
    assert count == 6 and all(len(states) == 2 for states in seen.values())


def test_the_knowledge_shift_changes_what_the_memory_loss_sees(backbone):
    """A control for the test above: with the knowledge let in, the re-read states differ from the stored
    unedited ones (otherwise re-reading them would be pointless)."""
    layers = backbone.last_layers(2)
    unrelated = unrelated_inputs(backbone, layers)
    injection = with_edit_knowledge(backbone, layers, FixedGate(1.0))
    seen, _ = unrelated.seen(injection, injection.attached)
    assert not torch.allclose(seen[layers[-1]], unrelated.ffn[layers[-1]], atol=1e-3)


def test_an_editor_reports_how_many_memory_questions_its_knowledge_reached(backbone):
    layers = backbone.last_layers(2)
    for gate, expected in ((FixedGate(0.5), 6), (SemanticGate(CosineEncoders(1.01)), 0)):
        injection = KnowledgeInjection(backbone, random_knowledge(backbone, layers), 4, gate)
        editor = UniKEEditor(
            backbone, layers, IntrinsicConfig(neurons=2, max_steps=2), injection, None,
            unrelated_inputs(backbone, layers),
        )  # fmt: skip
        assert editor.edit(edit_inputs(backbone)).memory_reached == expected
        editor.restore()
