"""LAVIS BLIP-2 / MiniGPT-4 checkpoints converted to a transformers folder: every tensor lands, none is
left over, and the image features equal LAVIS's forward computed from the raw tensors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import CORPUS
from tests.lavis_tensors import VIT_LAYERS, lavis_files, reference_image_features
from unike_pl.backbones.lavis import LavisSources, convert_lavis, read_sources, transformers_names
from unike_pl.backbones.loader import BackboneConfig, load_backbone
from unike_pl.errors import UserError


@pytest.fixture(scope="module")
def lavis(tmp_path_factory):
    """The tiny LAVIS files, their sources and the converted folder."""
    folder = tmp_path_factory.mktemp("lavis")
    files = lavis_files(folder, CORPUS * 5)
    sources = LavisSources(
        [str(files["blip2"]), str(files["vit"])],
        str(files["language"]),
        vit_layers=VIT_LAYERS,
        vit_heads=2,
        qformer_heads=2,
        local_files_only=True,
    )
    return files, sources, convert_lavis(sources, folder / "converted")


def test_every_lavis_tensor_lands_once_and_nothing_is_left_over(lavis):
    files, sources, converted = lavis
    raw = read_sources(sources.checkpoints)
    model = load_backbone(BackboneConfig(str(converted), local_files_only=True)).model
    state = model.state_dict()
    bridge = {k: v for k, v in state.items() if not k.startswith("language_model.")}
    assert transformers_names(raw, sources).keys() == bridge.keys()  # every place filled from LAVIS
    assert torch.equal(bridge["query_tokens"], raw["query_tokens"])
    assert torch.equal(bridge["vision_model.post_layernorm.weight"], raw["ln_vision.weight"])
    key = "qformer.encoder.layer.2.crossattention.attention.value.weight"
    assert torch.equal(bridge[key], raw["Qformer.bert.encoder.layer.2.crossattention.self.value.weight"])
    qkv = bridge["vision_model.encoder.layers.1.self_attn.qkv.bias"]
    q_bias, v_bias = raw["visual_encoder.blocks.1.attn.q_bias"], raw["visual_encoder.blocks.1.attn.v_bias"]
    assert torch.equal(qkv, torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]))
    assert f"vision_model.encoder.layers.{VIT_LAYERS}.mlp.fc1.weight" not in bridge  # EVA's extra block
    source = AutoModelForCausalLM.from_pretrained(files["language"])
    for name, tensor in source.state_dict().items():
        assert torch.equal(state[f"language_model.{name}"], tensor), name


def test_the_converted_image_features_equal_lavis_forward(lavis):
    files, sources, converted = lavis
    model = load_backbone(BackboneConfig(str(converted), local_files_only=True)).model
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = model.get_image_features(pixel_values=pixels).pooler_output
    reference = reference_image_features(read_sources(sources.checkpoints), pixels, "opt_proj")
    assert ours.shape == reference.shape == (2, 4, model.config.text_config.hidden_size)
    # the one difference: ln_vision's eps (LAVIS 1e-5, transformers 1e-6)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_a_tensor_with_no_place_is_refused(lavis, tmp_path):
    files, sources, _ = lavis
    stray = tmp_path / "stray.pth"
    torch.save(
        {"model": {"Qformer.bert.encoder.layer.0.crossattention.self.bogus.weight": torch.zeros(2)}}, stray
    )
    with pytest.raises(
        UserError, match=r"no place in a BLIP-2: Qformer\.bert\.encoder\.layer\.0\.crossattention"
    ):
        transformers_names(read_sources([*sources.checkpoints, stray]), sources)


def test_the_same_name_with_other_values_in_two_files_is_refused(lavis, tmp_path):
    files, sources, _ = lavis
    other = tmp_path / "other.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1, 4, 24)}}, other)
    with pytest.raises(UserError, match="query_tokens differs from the tensor of the same name"):
        read_sources([*sources.checkpoints, other])


def test_a_minigpt4_checkpoint_takes_its_projection_and_the_blip2_vision_side(tmp_path):
    """MiniGPT-4's file holds only llama_proj; the ViT and Q-Former come from a FlanT5 BLIP-2 file, whose
    t5_proj is left out; the LLaMA language model gives the MiniGPT-4 prompt."""
    files = lavis_files(tmp_path, CORPUS * 5, minigpt4=True)
    sources = LavisSources(
        [str(files["minigpt4"]), str(files["blip2"]), str(files["vit"])],
        str(files["language"]),
        projection="llama_proj",
        vit_layers=VIT_LAYERS,
        vit_heads=2,
        qformer_heads=2,
        local_files_only=True,
    )
    backbone = load_backbone(
        BackboneConfig(str(convert_lavis(sources, tmp_path / "out")), local_files_only=True)
    )
    assert backbone.encoder.prompt_format.name == "minigpt4"
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = backbone.model.get_image_features(pixel_values=pixels).pooler_output
    reference = reference_image_features(read_sources(sources.checkpoints), pixels, "llama_proj")
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
