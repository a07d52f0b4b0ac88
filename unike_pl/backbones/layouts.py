"""Declarative tables: where each backbone keeps the parts that editing methods touch.

Method code asks these tables for module paths and never names a model. Adding an architecture is
one row here (and, if its chat wrapper is new, one prompt format).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unike_pl.errors import UserError


@dataclass(frozen=True)
class DecoderLayout:
    """Dotted module paths inside one language model (relative to the language-model module)."""

    layers: str
    """The ModuleList of decoder layers."""
    attention: str
    """Self-attention block, relative to a layer."""
    attention_norm: str
    """Norm before self-attention, relative to a layer; its output is the layer's pre-attention state."""
    query: str
    key: str
    value: str
    attention_out: str
    """Output projection of self-attention, relative to a layer."""
    ffn_keys: tuple[str, ...]
    """FFN input linears (the key memory), relative to a layer: one, or gate and up for gated FFNs."""
    ffn_value: str
    """FFN output linear (the value memory), relative to a layer."""
    activation: str
    """Config attribute naming the FFN activation of the language model."""
    final_norm: str
    """Norm after the last layer, relative to the language model."""
    output_projection: str | None = None
    """Optional projection between the final norm and the LM head (OPT-350m's `project_out`)."""

    @property
    def gated(self) -> bool:
        return len(self.ffn_keys) == 2


OPT_DECODER = DecoderLayout(
    layers="model.decoder.layers",
    attention="self_attn",
    attention_norm="self_attn_layer_norm",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attention_out="self_attn.out_proj",
    ffn_keys=("fc1",),
    ffn_value="fc2",
    activation="activation_function",
    final_norm="model.decoder.final_layer_norm",
    output_projection="model.decoder.project_out",
)


def _llama_like(prefix: str) -> DecoderLayout:
    """LLaMA-family decoders (LLaMA, Vicuna, Qwen2): gated FFN, RMSNorm, same names."""
    return DecoderLayout(
        layers=f"{prefix}layers",
        attention="self_attn",
        attention_norm="input_layernorm",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attention_out="self_attn.o_proj",
        ffn_keys=("mlp.gate_proj", "mlp.up_proj"),
        ffn_value="mlp.down_proj",
        activation="hidden_act",
        final_norm=f"{prefix}norm",
    )


DECODER_LAYOUTS: Mapping[str, DecoderLayout] = {
    # keyed by the class name of the language-model module
    "OPTForCausalLM": OPT_DECODER,
    "LlamaForCausalLM": _llama_like("model."),
    "LlamaModel": _llama_like(""),
    "MistralModel": _llama_like(""),
    "Qwen2Model": _llama_like(""),
    "Qwen2VLTextModel": _llama_like(""),
}


def _query_token_count(config: Any, image_inputs: Mapping[str, torch.Tensor]) -> list[int]:
    """BLIP-2: every image becomes `num_query_tokens` embeddings."""
    return [config.num_query_tokens] * len(image_inputs["pixel_values"])


def _patch_token_count(config: Any, image_inputs: Mapping[str, torch.Tensor]) -> list[int]:
    """LLaVA: one embedding per patch, plus CLS when the feature strategy keeps it."""
    vision = config.vision_config
    count = (vision.image_size // vision.patch_size) ** 2
    count += 1 if config.vision_feature_select_strategy == "full" else 0
    return [count] * len(image_inputs["pixel_values"])


def _grid_token_count(config: Any, image_inputs: Mapping[str, torch.Tensor]) -> list[int]:
    """Qwen2-VL: dynamic resolution; each image gives t*h*w patches merged by spatial_merge_size**2."""
    merge = config.vision_config.spatial_merge_size**2
    return [int(n) // merge for n in image_inputs["image_grid_thw"].prod(-1)]


def _split_by_image(config: Any, image_inputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One dict of image inputs per image, for models whose pixel tensor has one row per image."""
    return [{"pixel_values": row[None]} for row in image_inputs["pixel_values"]]


def _split_by_grid(config: Any, image_inputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Qwen2-VL packs all images' patches in one tensor; cut it by each image's patch count."""
    grids = image_inputs["image_grid_thw"]
    sizes = [int(n) for n in grids.prod(-1)]
    chunks = image_inputs["pixel_values"].split(sizes)
    return [
        {"pixel_values": chunk, "image_grid_thw": grid[None]}
        for chunk, grid in zip(chunks, grids, strict=True)
    ]


@dataclass(frozen=True)
class MLLMLayout:
    """Where the language model sits in one multimodal class, and how it consumes images."""

    language_model: str
    """Path of the language-model module (its class keys DECODER_LAYOUTS)."""
    text_forward: str
    """Module to call for text-only inputs ("" = the whole model, which accepts no pixels)."""
    lm_head: str
    """Path of the output projection to the vocabulary (applied after the decoder's final norm)."""
    vision: tuple[str, ...]
    """Frozen vision-side modules (encoder, bridge, projection)."""
    image_token_counts: Callable[[Any, Mapping[str, torch.Tensor]], list[int]]
    split_images: Callable[[Any, Mapping[str, torch.Tensor]], list[dict[str, torch.Tensor]]]
    image_inputs: tuple[str, ...]
    """Names of the image-processor outputs the model's forward takes."""
    default_prompt: Mapping[str, str]
    """Prompt format name per language-model `model_type` ("*" = any)."""
    marks_image_tokens: bool = False
    """The forward also takes `mm_token_type_ids` (1 at image placeholders, 0 elsewhere), which Qwen2-VL
    needs for its multimodal rotary positions; the backbone derives it from the input ids."""

    def prompt_format_for(self, text_model_type: str) -> str | None:
        return self.default_prompt.get(text_model_type, self.default_prompt.get("*"))


MLLM_LAYOUTS: Mapping[str, MLLMLayout] = {
    "Blip2ForConditionalGeneration": MLLMLayout(
        language_model="language_model",
        text_forward="language_model",  # the BLIP-2 forward requires pixels
        lm_head="language_model.lm_head",
        vision=("vision_model", "qformer", "language_projection"),
        image_token_counts=_query_token_count,
        split_images=_split_by_image,
        image_inputs=("pixel_values",),
        # A BLIP-2 vision stack with a LLaMA/Vicuna language model is how MiniGPT-4 is represented.
        default_prompt={"opt": "blip2", "llama": "minigpt4"},
    ),
    "LlavaForConditionalGeneration": MLLMLayout(
        language_model="model.language_model",
        text_forward="",
        lm_head="lm_head",
        vision=("model.vision_tower", "model.multi_modal_projector"),
        image_token_counts=_patch_token_count,
        split_images=_split_by_image,
        image_inputs=("pixel_values",),
        default_prompt={"*": "llava15"},
    ),
    "Qwen2VLForConditionalGeneration": MLLMLayout(
        language_model="model.language_model",
        text_forward="",
        lm_head="lm_head",
        vision=("model.visual",),
        image_token_counts=_grid_token_count,
        split_images=_split_by_grid,
        image_inputs=("pixel_values", "image_grid_thw"),
        default_prompt={"*": "qwen2vl"},
        marks_image_tokens=True,
    ),
}


def mllm_layout(class_name: str) -> MLLMLayout:
    try:
        return MLLM_LAYOUTS[class_name]
    except KeyError:
        raise UserError(
            f"no layout for model class {class_name!r}; supported: {sorted(MLLM_LAYOUTS)}"
        ) from None


def decoder_layout(class_name: str) -> DecoderLayout:
    try:
        return DECODER_LAYOUTS[class_name]
    except KeyError:
        raise UserError(
            f"no decoder layout for language model {class_name!r}; supported: {sorted(DECODER_LAYOUTS)}"
        ) from None
