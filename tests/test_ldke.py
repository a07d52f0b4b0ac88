"""LDKE's layer scorers on a tiny BLIP-2: the fast ones are the first-order estimates they claim to be."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.backbones.encoding import EXAMPLES
from unike_pl.ldke import (
    LocalizationConfig,
    agreement,
    attribution,
    causal_tracing,
    gradient_activation,
    layer_scores,
    locate,
    own_answer_fact,
    top_layers,
)
from unike_pl.ldke.localization import (
    Corruption,
    _clean_run,
    _objective,
    ffn_outputs,
    first_layer_input,
)

RED = Image.new("RGB", (40, 40), (220, 30, 30))
EPSILON = 1e-5  # small: the tiny OPT decoder is ReLU, piecewise linear, with kinks nearby


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


@pytest.fixture(scope="module")
def precise(tiny_models):
    """The tiny BLIP-2 in float64: finite differences of its tiny effects stay well above rounding."""
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True)).double()


def fact(backbone):
    return backbone.encoder.encode([Example("what color is the circle?", "purple", RED)], keep_examples=True)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def central_difference(backbone, inputs, layer, point, direction, corrupt=None):
    """d z / d t at t = 0 of layer `layer`'s FFN output set to point + t · direction."""
    values = []
    for step in (EPSILON, -EPSILON):
        with (
            first_layer_input(backbone, corrupt),
            ffn_outputs(backbone, [layer], replace={layer: point + step * direction}),
        ):
            values.append(_objective(backbone, inputs))
    return float((values[0] - values[1]) / (2 * EPSILON))


def test_gradient_activation_predicts_the_effect_of_shrinking_a_layers_ffn_output(precise):
    backbone = precise
    inputs, layers = fact(backbone), list(range(backbone.num_layers))
    scores = gradient_activation(backbone, inputs, layers, LocalizationConfig("gradient_activation"))
    _, clean = _clean_run(backbone, inputs, layers)
    for layer in layers:
        # scaling m_l by (1 − ε) moves z by −ε · g · m_l to first order
        slope = central_difference(backbone, inputs, layer, clean[layer], -clean[layer])
        assert -slope == pytest.approx(float(scores[layer]), rel=1e-3, abs=1e-8)
    assert float(scores.abs().min()) > 1e-6  # not trivially zero


def test_attribution_is_the_first_order_move_from_corrupted_towards_clean(precise):
    backbone = precise
    inputs, layers = fact(backbone), list(range(backbone.num_layers))
    config = LocalizationConfig(noise=3.0, samples=1, seed=7)
    scores = attribution(backbone, inputs, layers, config)
    first, clean = _clean_run(backbone, inputs, layers)
    noise = Corruption.of(backbone, inputs, first, config).draw()  # the draw attribution made

    def corrupt(hidden):
        return hidden + noise

    with torch.no_grad(), first_layer_input(backbone, corrupt), ffn_outputs(backbone, layers) as corrupted:
        backbone(inputs)
    for layer in layers:
        towards_clean = clean[layer] - corrupted[layer]
        slope = central_difference(backbone, inputs, layer, corrupted[layer], towards_clean, corrupt)
        assert slope == pytest.approx(float(scores[layer]), rel=1e-3, abs=1e-8)
    assert float(scores.abs().min()) > 1e-6


def test_causal_tracing_without_noise_recovers_nothing_and_is_seeded(backbone):
    inputs, layers = fact(backbone), list(range(backbone.num_layers))
    silent = causal_tracing(backbone, inputs, layers, LocalizationConfig(noise=0.0))
    assert torch.equal(silent, torch.zeros(len(layers)))
    seeded = LocalizationConfig("causal_tracing", samples=2, seed=3)
    first = causal_tracing(backbone, inputs, layers, seeded)
    assert torch.equal(first, causal_tracing(backbone, inputs, layers, seeded))
    other = causal_tracing(backbone, inputs, layers, LocalizationConfig("causal_tracing", samples=2, seed=4))
    assert not torch.equal(first, other)
    assert float(first.abs().max()) > 0


@pytest.mark.parametrize("scorer", ["attribution", "gradient_activation", "causal_tracing"])
def test_scorers_score_the_layers_asked_for_and_leave_the_model_as_it_was(backbone, scorer):
    inputs, hooks = fact(backbone), hook_count(backbone.model)
    params = {name: p.clone() for name, p in backbone.model.named_parameters()}
    before = backbone(inputs)
    config = LocalizationConfig(scorer, samples=2)
    every = layer_scores(backbone, inputs, range(backbone.num_layers), config)
    some = layer_scores(backbone, inputs, [3, 0, 2], config)
    assert every.shape == (backbone.num_layers,) and some.shape == (3,)
    assert torch.allclose(some, every[[3, 0, 2]], rtol=1e-4, atol=1e-5)
    assert bool(torch.isfinite(every).all())
    assert hook_count(backbone.model) == hooks
    assert torch.equal(backbone(inputs), before)
    for name, p in backbone.model.named_parameters():
        assert not p.requires_grad and p.grad is None and torch.equal(p, params[name])


def test_config_rejects_unknown_scorers():
    with pytest.raises(ValueError, match="attribution, gradient_activation, causal_tracing"):
        LocalizationConfig("integrated_gradients")
    with pytest.raises(ValueError, match="layers"):
        LocalizationConfig(layers=0)


def test_top_layers_and_agreement():
    fast = torch.tensor([0.1, 0.9, 0.5, 0.3])
    reference = torch.tensor([0.2, 0.8, 0.1, 0.7])
    assert top_layers(fast, [4, 5, 6, 7], 2) == [5, 6]
    assert top_layers(reference, [7, 5, 3, 1], 2) == [1, 5]
    assert top_layers(fast, [4, 5, 6, 7], 9) == [4, 5, 6, 7]
    assert agreement(fast, reference, 1) == 1.0
    assert agreement(fast, reference, 2) == 0.5
    with pytest.raises(ValueError):
        top_layers(fast, [1, 2], 1)


def test_own_answer_fact_holds_the_models_answer_or_else_the_target(backbone, monkeypatch):
    inputs = fact(backbone)
    own = own_answer_fact(backbone, inputs)[EXAMPLES][0]
    assert own.prompt == "what color is the circle?" and own.image is RED
    assert own.target == (backbone.generate_answers(inputs, 8)[0] or "purple")
    monkeypatch.setattr(backbone, "generate_answers", lambda batch, tokens: ["blue"])
    blue = own_answer_fact(backbone, inputs)
    assert blue[EXAMPLES][0].target == "blue"
    expected = backbone.encoder.encode([Example("what color is the circle?", "blue", RED)])
    assert torch.equal(blue["labels"], expected["labels"])
    monkeypatch.setattr(backbone, "generate_answers", lambda batch, tokens: [""])
    assert own_answer_fact(backbone, inputs)[EXAMPLES][0].target == "purple"


def test_locate_returns_the_best_candidates_for_the_models_own_answer(backbone):
    inputs, candidates = fact(backbone), [3, 0, 2]
    config = LocalizationConfig(layers=2)
    chosen = locate(backbone, inputs, candidates, config)
    scores = attribution(backbone, own_answer_fact(backbone, inputs), candidates, config)
    best = sorted(candidates[i] for i in scores.topk(2).indices.tolist())
    assert chosen == best and len(chosen) == config.layers
    with pytest.raises(ValueError, match="no layer 9"):
        locate(backbone, inputs, [1, 9], config)
