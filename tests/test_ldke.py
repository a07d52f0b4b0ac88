"""LDKE's layer scorers on a tiny BLIP-2: the fast one is the first-order estimate it claims to be."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.ldke import agreement, causal_tracing_scores, gradient_activation_scores, top_layers
from unike_pl.ldke.localization import _layer_io, answer_logits, gradient_activation_effects

RED = Image.new("RGB", (40, 40), (220, 30, 30))


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


def fact(backbone):
    return backbone.encoder.encode([Example("what color is the circle?", "purple", RED)])


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_gradient_times_update_predicts_the_effect_of_shrinking_a_layer(backbone):
    inputs = fact(backbone)
    effects = gradient_activation_effects(backbone, inputs)
    epsilon = 1e-3
    with torch.no_grad():
        base = answer_logits(backbone(inputs), inputs["labels"])
        for layer in range(backbone.num_layers):

            def shrink(index, before, after, layer=layer):
                return before + (1 - epsilon) * (after - before) if index == layer else after

            with _layer_io(backbone, outputs=shrink):
                shrunk = answer_logits(backbone(inputs), inputs["labels"])
            # removing a fraction ε of the update changes the logits by ε · (g · Δ) to first order
            assert float((base - shrunk) / epsilon) == pytest.approx(
                float(effects[layer]), rel=0.05, abs=1e-3
            )


def test_scorers_leave_no_hooks_and_give_one_score_per_layer(backbone):
    inputs, hooks = fact(backbone), hook_count(backbone.model)
    before = backbone(inputs)
    fast = gradient_activation_scores(backbone, inputs)
    slow = causal_tracing_scores(backbone, inputs, samples=2)
    assert fast.shape == slow.shape == (backbone.num_layers,)
    assert bool((fast >= 0).all()) and bool(torch.isfinite(slow).all())
    assert hook_count(backbone.model) == hooks
    assert torch.equal(backbone(inputs), before)
    assert all(not p.requires_grad for p in backbone.model.parameters())


def test_causal_tracing_without_noise_recovers_nothing_and_is_seeded(backbone):
    inputs = fact(backbone)
    silent = causal_tracing_scores(backbone, inputs, noise=0.0, samples=1)
    assert torch.allclose(silent, torch.zeros(backbone.num_layers))
    first = causal_tracing_scores(backbone, inputs, samples=2, seed=3)
    assert torch.equal(first, causal_tracing_scores(backbone, inputs, samples=2, seed=3))


def test_top_layers_and_agreement():
    fast = torch.tensor([0.1, 0.9, 0.5, 0.3])
    reference = torch.tensor([0.2, 0.8, 0.1, 0.7])
    assert top_layers(fast, 2) == [1, 2]
    assert top_layers(reference, 2) == [1, 3]
    assert agreement(fast, reference, 1) == 1.0
    assert agreement(fast, reference, 2) == 0.5
