"""LAVIS BLIP-2 and MiniGPT-4 checkpoints as a transformers `Blip2ForConditionalGeneration` folder.

LAVIS saves only what it trained: a BLIP-2 `.pth` holds `ln_vision`, `query_tokens`, the Q-Former and the
projection into the language model (`opt_proj`, `t5_proj`); MiniGPT-4's holds only `llama_proj`. The EVA
ViT-g comes from its own file (`eva_vit_g.pth`, keys without the `visual_encoder.` prefix, 40 blocks of
which BLIP-2 runs the first 39) and the language model from a Hugging Face folder or hub id. This module
renames every tensor of those sources to transformers' names (the same weights: only the ViT's q and v
biases are joined into one qkv bias, with the zero k bias LAVIS adds in its forward), refuses a source
tensor that lands nowhere, and writes a folder `load_backbone` opens.

Differences that remain: LAVIS's `ln_vision` uses LayerNorm's eps 1e-5 where transformers uses the
vision config's 1e-6 for every vision norm (a relative difference of about 1e-6 in the image features).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    BlipImageProcessorPil,
)

from unike_pl.backbones.factory import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN
from unike_pl.backbones.loader import DTYPES
from unike_pl.errors import UserError, read_torch_file
from unike_pl.io import atomic_directory

VIT_PREFIX = "visual_encoder."
_BLOCK, _LAYER = r"visual_encoder\.blocks\.(\d+)\.", r"vision_model.encoder.layers.\1."
_QLAYER, _QTARGET = r"Qformer\.bert\.encoder\.layer\.(\d+)\.", r"qformer.encoder.layer.\1."
_WB = r"\.(weight|bias)"
RENAMES: tuple[tuple[str, str], ...] = (
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj" + _WB, r"vision_model.embeddings.patch_embedding.\1"),
    (_BLOCK + r"norm([12])" + _WB, _LAYER + r"layer_norm\2.\3"),
    (_BLOCK + r"attn\.qkv\.weight", _LAYER + "self_attn.qkv.weight"),
    (_BLOCK + r"attn\.proj" + _WB, _LAYER + r"self_attn.projection.\2"),
    (_BLOCK + r"mlp\.(fc[12])" + _WB, _LAYER + r"mlp.\2.\3"),
    (r"ln_vision" + _WB, r"vision_model.post_layernorm.\1"),
    (r"query_tokens", "query_tokens"),
    (r"Qformer\.bert\.embeddings\.LayerNorm" + _WB, r"qformer.layernorm.\1"),
    (
        _QLAYER + r"(attention|crossattention)\.self\.(query|key|value)" + _WB,
        _QTARGET + r"\2.attention.\3.\4",
    ),
    (_QLAYER + r"(attention|crossattention)\.output\.(dense|LayerNorm)" + _WB, _QTARGET + r"\2.output.\3.\4"),
    (_QLAYER + r"(intermediate_query|output_query)\.(dense|LayerNorm)" + _WB, _QTARGET + r"\2.\3.\4"),
)
"""LAVIS name (a full match) → transformers name; the q/v biases of the ViT are joined separately."""

UNUSED = (
    r"Qformer\.bert\.embeddings\.position_ids",  # a buffer of positions, rebuilt by transformers
    r"Qformer\.cls\..*",  # the Q-Former's text parts: BLIP-2 generation never runs them
    r"Qformer\.bert\.embeddings\.(word|position)_embeddings\..*",
    r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*",
)
"""LAVIS tensors that BLIP-2's image-to-text path does not use (present in stage-1 checkpoints)."""

PROJECTIONS = ("opt_proj", "llama_proj", "t5_proj")
BIAS = re.compile(r"visual_encoder\.blocks\.(\d+)\.attn\.(q|v)_bias")
BLOCK = re.compile(r"visual_encoder\.blocks\.(\d+)\.")


@dataclass
class LavisSources:
    """What one converted model is made of."""

    checkpoints: list[str]
    """LAVIS `.pth` files (their `model` entry, or the state dict itself): the BLIP-2 checkpoint, the EVA
    ViT file, and for MiniGPT-4 its checkpoint and the BLIP-2 one its Q-Former comes from."""
    language_model: str
    """The language model: a Hugging Face folder or hub id (OPT for BLIP-2 OPT, Vicuna for MiniGPT-4)."""
    projection: str = "opt_proj"
    """Which projection into the language model to use (opt_proj, llama_proj); other ones are unused."""
    vit_layers: int = 39
    """ViT blocks BLIP-2 runs (the first 39 of EVA ViT-g's 40); later blocks are left out."""
    vit_heads: int = 16
    """Attention heads of the ViT (EVA ViT-g: 16; not readable from the weights)."""
    qformer_heads: int = 12
    """Attention heads of the Q-Former (bert-base: 12)."""
    local_files_only: bool = False


def read_sources(files: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    """The tensors of every file, under LAVIS's model names: a bare EVA ViT file gets `visual_encoder.`.
    A name found in two files must hold the same tensor in both."""
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        payload = read_torch_file(file, "a LAVIS checkpoint", map_location="cpu")
        state = payload.get("model", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise UserError(f"{file}: not a LAVIS checkpoint (expected a state dict, or one under 'model')")
        bare_vit = any(key.startswith(("blocks.", "cls_token", "pos_embed")) for key in state)
        for key, tensor in state.items():
            name = VIT_PREFIX + key if bare_vit else key
            if name in merged and not torch.equal(merged[name], tensor):
                raise UserError(f"{file}: {key} differs from the tensor of the same name in an earlier file")
            merged[name] = tensor
    return merged


def transformers_names(tensors: Mapping[str, torch.Tensor], sources: LavisSources) -> dict[str, torch.Tensor]:
    """The vision side of a BLIP-2 under transformers' names; a tensor that lands nowhere is an error."""
    if sources.projection not in PROJECTIONS:
        raise UserError(f"projection must be one of {', '.join(PROJECTIONS)}, not {sources.projection!r}")
    converted: dict[str, torch.Tensor] = {}
    biases: dict[int, dict[str, torch.Tensor]] = {}
    left_over = []
    for name, tensor in tensors.items():
        block = BLOCK.match(name)
        if block and int(block.group(1)) >= sources.vit_layers:
            continue  # EVA ViT-g's last block: BLIP-2 reads the features before it
        if name.startswith(f"{sources.projection}."):
            converted["language_projection." + name.split(".", 1)[1]] = tensor
        elif bias := BIAS.fullmatch(name):
            biases.setdefault(int(bias.group(1)), {})[bias.group(2)] = tensor
        elif target := _renamed(name):
            converted[target] = tensor
        elif not _unused(name):
            left_over.append(name)
    if left_over:
        raise UserError(f"LAVIS tensors with no place in a BLIP-2: {', '.join(sorted(left_over)[:8])}")
    for layer, pair in sorted(biases.items()):
        if set(pair) != {"q", "v"}:
            raise UserError(f"ViT block {layer}: a q_bias without a v_bias or the other way round")
        qkv = torch.cat([pair["q"], torch.zeros_like(pair["v"]), pair["v"]])  # LAVIS's forward: k bias 0
        converted[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = qkv
    return converted


def _unused(name: str) -> bool:
    """A tensor BLIP-2's path from image to text does not run (another model's projection included)."""
    return name.split(".")[0] in PROJECTIONS or any(re.fullmatch(pattern, name) for pattern in UNUSED)


def _renamed(name: str) -> str | None:
    for pattern, target in RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name)
    return None


def _layer_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if indices != set(range(len(indices))) or not indices:
        raise UserError(f"the checkpoints hold layers {sorted(indices)} of {prefix}*: expected 0, 1, 2, ...")
    return len(indices)


def blip2_config(
    state: Mapping[str, torch.Tensor], text_config: dict, image_token_id: int, sources: LavisSources
) -> Blip2Config:
    """A BLIP-2 config whose sizes are read off the converted weights (heads, which the weights do not
    show, from `sources`)."""
    needed = ("query_tokens", "vision_model.embeddings.patch_embedding.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise UserError(f"the checkpoints lack {', '.join(missing)}: pass the BLIP-2 and the EVA ViT files")
    width = state["vision_model.embeddings.class_embedding"].shape[-1]
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(state["vision_model.embeddings.position_embedding"].shape[1] - 1)
    qformer_layers = _layer_count(state, "qformer.encoder.layer.")
    cross_key = "qformer.encoder.layer.{}.crossattention.attention.key.weight"
    crossed = [i for i in range(qformer_layers) if cross_key.format(i) in state]
    every = crossed[1] - crossed[0] if len(crossed) > 1 else qformer_layers
    if not crossed or crossed != list(range(0, qformer_layers, every)):
        raise UserError(f"Q-Former cross-attention in layers {crossed}: expected every n-th layer from 0")
    vision = dict(
        hidden_size=width,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_layer_count(state, "vision_model.encoder.layers."),
        num_attention_heads=sources.vit_heads,
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    qformer = dict(
        hidden_size=state["query_tokens"].shape[-1],
        num_hidden_layers=qformer_layers,
        num_attention_heads=sources.qformer_heads,
        intermediate_size=state["qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        cross_attention_frequency=every,
        encoder_hidden_size=state[cross_key.format(0)].shape[1],
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text_config,
        num_query_tokens=state["query_tokens"].shape[1],
        image_token_index=image_token_id,
    )
    config.architectures = ["Blip2ForConditionalGeneration"]
    return config


def convert_lavis(sources: LavisSources, output: str | Path, dtype: str = "float32") -> Path:
    """Write the model of `sources` to `output` (replaced whole), with its tokenizer (given an `<image>`
    placeholder token when it has none) and the LAVIS evaluation image processing (224 px bicubic, CLIP
    mean and std)."""
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    bridge = transformers_names(read_sources(sources.checkpoints), sources)
    load = dict(local_files_only=sources.local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(sources.language_model, **load)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    language = AutoModelForCausalLM.from_pretrained(sources.language_model, dtype=DTYPES[dtype], **load)
    if len(tokenizer) > language.get_input_embeddings().num_embeddings:
        language.resize_token_embeddings(len(tokenizer))  # the placeholder's row is never read
    text_config = AutoConfig.from_pretrained(sources.language_model, **load).to_dict()
    text_config["vocab_size"] = language.get_input_embeddings().num_embeddings
    config = blip2_config(bridge, text_config, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), sources)
    with torch.device("meta"):  # no second copy of the language model's weights
        model = Blip2ForConditionalGeneration(config)
    model.language_model = language
    missing, unexpected = model.load_state_dict(
        {k: v.to(DTYPES[dtype]) for k, v in bridge.items()}, strict=False, assign=True
    )
    missing = [key for key in missing if not key.startswith("language_model.")]
    if missing or unexpected:
        raise UserError(
            f"the converted weights do not fit a BLIP-2: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise UserError(f"no weights for {', '.join(empty[:5])}")
    size = config.vision_config.image_size
    image_processor = BlipImageProcessorPil(
        size={"height": size, "width": size},
        resample=3,  # bicubic, as LAVIS's evaluation transform
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    with atomic_directory(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        image_processor.save_pretrained(staging)
    return Path(output)
