"""The loader opens tiny BLIP-2, MiniGPT-4-style and LLaVA models saved like hub snapshots."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from unike_pl.backbones import (
    DECODER_LAYOUTS,
    IGNORE_INDEX,
    BackboneConfig,
    Example,
    load_backbone,
    load_encoder,
)
from unike_pl.backbones.decoding import greedy_answers_one_by_one
from unike_pl.backbones.factory import build_blip2
from unike_pl.backbones.layouts import mllm_layout
from unike_pl.backbones.prompts import VQA_TEMPLATE, PromptFormat, get_prompt_format, wrap_question

RED = Image.new("RGB", (40, 40), (220, 30, 30))
BLUE = Image.new("RGB", (40, 40), (30, 30, 220))
EXPECTED = {
    "blip2": ("blip2", "OPTForCausalLM", False),
    "minigpt4": ("minigpt4", "LlamaForCausalLM", True),
    "llava": ("llava15", "LlamaModel", True),
    "qwen2vl": ("qwen2vl", "Qwen2VLTextModel", True),
}


@pytest.fixture(scope="module")
def backbones(tiny_models):
    return {
        name: load_backbone(BackboneConfig(str(path), local_files_only=True))
        for name, path in tiny_models.items()
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_keeps_every_weight(name, tiny_builds, backbones):
    _, built = tiny_builds[name]
    loaded = backbones[name].model.state_dict()
    assert built and loaded.keys() == built.keys()
    for key, tensor in built.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_finds_editable_parts(name, backbones):
    backbone = backbones[name]
    prompt, language_class, gated = EXPECTED[name]
    assert backbone.encoder.prompt_format.name == prompt
    assert type(backbone.language_model).__name__ == language_class
    assert backbone.decoder.gated is gated
    assert backbone.num_layers == 4 and backbone.last_layers(2) == [2, 3]
    hidden = backbone.hidden_size
    for key in backbone.decoder.ffn_keys:
        assert backbone.layer_part(3, key).in_features == hidden
    assert backbone.layer_part(3, backbone.decoder.ffn_value).out_features == hidden
    assert backbone.layer_part(0, backbone.decoder.attention_out).out_features == hidden
    assert all(not p.requires_grad for p in backbone.parameters())


def test_last_layers_rejects_too_many(backbones):
    with pytest.raises(ValueError, match="last 5 of 4"):
        backbones["blip2"].last_layers(5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_labels_cover_only_the_target(name, backbones):
    encoder = backbones[name].encoder
    batch = encoder.encode(
        [Example("what color is the circle?", "purple", RED), Example("how many?", "two", BLUE)]
    )
    for i, target in enumerate(["purple", "two"]):
        target_ids = encoder.target_ids(target)
        labels = batch["labels"][i]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == target_ids
        start = int(batch["prompt_length"][i])
        assert batch["input_ids"][i, start : start + len(kept)].tolist() == target_ids
    # padding is masked out of attention and labels
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    image_id = encoder.image_token_id
    counts = (batch["input_ids"] == image_id).sum(-1).tolist()
    assert counts[0] == counts[1] > 0


def test_blip2_puts_image_tokens_before_bos(backbones):
    encoder = backbones["blip2"].encoder
    ids = encoder.prompt_ids("what color?", image_tokens=4)
    assert ids[:4] == [encoder.image_token_id] * 4
    assert ids[4] == encoder.tokenizer.bos_token_id


def test_minigpt4_wraps_the_image(backbones):
    encoder = backbones["minigpt4"].encoder
    batch = encoder.encode([Example("what color?", "red", RED)])
    text = encoder.tokenizer.decode(batch["input_ids"][0, : int(batch["prompt_length"][0])])
    assert text.startswith("<s>###Human: <Img><image>")
    assert text.endswith("</Img> what color? ###Assistant:")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_image_reaches_the_language_model(name, backbones):
    backbone = backbones[name]
    red = backbone(backbone.encoder.encode([Example("what color?", "red", RED)]))
    blue = backbone(backbone.encoder.encode([Example("what color?", "red", BLUE)]))
    assert red.shape == blue.shape
    # A clear difference, not a rounding echo: a vision tower left at its 1e-10 default init passes allclose.
    assert (red - blue).abs().max() > 1e-3, "changing the image must change the logits"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_text_only_inputs_run_without_pixels(name, backbones):
    backbone = backbones[name]
    batch = backbone.encoder.encode([Example("nq question: capital of zorland?", "mirth")])
    assert "pixel_values" not in batch
    assert (batch["input_ids"] != backbone.encoder.image_token_id).all()
    logits = backbone(batch)
    assert logits.shape[:2] == batch["input_ids"].shape


def test_generate_answers_is_greedy_and_deterministic(backbones):
    backbone = backbones["blip2"]
    batch = backbone.encoder.encode(
        [Example("what color?", "red", RED), Example("a long prompt here", "x", BLUE)]
    )
    first = backbone.generate_answers(batch, max_new_tokens=3)
    assert first == backbone.generate_answers(batch, max_new_tokens=3)
    assert len(first) == 2 and all(isinstance(a, str) for a in first)
    # the first generated token is the argmax after the prompt
    step = backbone.encoder.encode([Example("what color?", "red", RED)])
    prompt_length = int(step["prompt_length"][0])
    logits = backbone(
        {
            **step,
            "input_ids": step["input_ids"][:, :prompt_length],
            "attention_mask": step["attention_mask"][:, :prompt_length],
        }
    )
    token = int(logits[0, -1].argmax())
    if token != backbone.encoder.tokenizer.eos_token_id:
        assert first[0].startswith(backbone.encoder.tokenizer.decode([token]).split("\n")[0].strip())


def test_encoder_loads_without_weights(tiny_models):
    encoder = load_encoder(BackboneConfig(str(tiny_models["llava"]), local_files_only=True))
    assert encoder.prompt_format.name == "llava15"
    assert encoder.image_token_id == encoder.tokenizer.convert_tokens_to_ids("<image>")


def test_prompt_format_override(tiny_models):
    encoder = load_encoder(
        BackboneConfig(str(tiny_models["blip2"]), prompt_format="minigpt4", local_files_only=True)
    )
    assert encoder.prompt_format.name == "minigpt4"
    with pytest.raises(ValueError, match="unknown prompt format 'nope'"):
        get_prompt_format("nope")


def test_unsupported_architecture_is_named(tmp_path, tiny_models):
    config = AutoConfig.from_pretrained(tiny_models["blip2"])
    config.architectures = ["Blip2Model"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no layout for model class 'Blip2Model'"):
        load_backbone(BackboneConfig(str(tmp_path), local_files_only=True))
    with pytest.raises(ValueError, match="no layout for model class 'Nope'"):
        mllm_layout("Nope")


def test_bad_dtype_is_rejected(tiny_models):
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_backbone(BackboneConfig(str(tiny_models["blip2"]), dtype="float8"))


def test_prompt_templates_are_validated():
    with pytest.raises(ValueError, match="needs one {image}"):
        PromptFormat("bad", multimodal="{prompt}", text_only="{prompt}")
    assert wrap_question("what?", True) == VQA_TEMPLATE.format("what?") == "Question: what? Short answer:"
    assert wrap_question("what?", False) == "what?"


def test_qwen2_vl_decoder_is_in_the_table():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=4, spatial_merge_size=2
        ),
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    model = Qwen2VLForConditionalGeneration(config)
    layout = mllm_layout("Qwen2VLForConditionalGeneration")
    language = model.get_submodule(layout.language_model)
    decoder = DECODER_LAYOUTS[type(language).__name__]
    assert len(language.get_submodule(decoder.layers)) == 2
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    assert layout.image_token_counts(config, {"image_grid_thw": grid}) == [6, 1]
    split = layout.split_images(config, {"pixel_values": torch.zeros(28, 3), "image_grid_thw": grid})
    assert [chunk["pixel_values"].shape[0] for chunk in split] == [24, 4]


def test_builder_rejects_unknown_language(tiny_tokenizer):
    from unike_pl.backbones.factory import ModelSize

    with pytest.raises(ValueError, match="'opt' or 'llama'"):
        build_blip2(tiny_tokenizer, ModelSize(), "gpt2")


def test_the_fingerprint_of_a_folder_follows_its_files(tmp_path):
    from unike_pl.backbones.fingerprint import backbone_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    config = BackboneConfig(str(tmp_path))
    first = backbone_fingerprint(config)
    assert backbone_fingerprint(config) == first
    (tmp_path / "weights.bin").write_bytes(b"\x01" * 11)
    assert backbone_fingerprint(config) != first
    other_dtype = BackboneConfig(str(tmp_path), dtype="bfloat16")
    assert backbone_fingerprint(other_dtype) != backbone_fingerprint(config)
    hub_ids = (BackboneConfig("org/model"), BackboneConfig("org/other"))
    assert backbone_fingerprint(hub_ids[0]) != backbone_fingerprint(hub_ids[1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("with_image", [True, False])
def test_batched_greedy_answers_equal_answers_one_by_one(name, with_image, backbones):
    backbone = backbones[name]
    prompts = [
        "what color is the circle?",
        "how many?",
        "what shape is shown in the picture here?",
        "a photo of",
    ]
    images = [RED, BLUE, BLUE, RED] if with_image else [None] * 4
    batch = backbone.encoder.encode(
        [Example(p, "red", image) for p, image in zip(prompts, images, strict=True)]
    )
    answers = backbone.generate_answers(batch, 6)
    assert answers == greedy_answers_one_by_one(backbone, batch, 6)
    assert any(answers)  # something was generated
