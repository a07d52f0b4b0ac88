"""Build small MLLMs from configs: the tests' tiny models and the embedded default model.

Each builder returns a randomly initialised transformers model and its processor, ready for
`save_pretrained`, so that the real loader opens them exactly as it opens a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from unike_pl.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
IMAGE_TOKEN = "<image>"
QWEN2VL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""The chat and vision markers of Qwen2-VL's prompt (`<|image_pad|>` stands for each image embedding)."""
INITIALIZER_RANGE = 0.02


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, extra_tokens: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with BOS/EOS/pad, the `<image>` placeholder and
    `extra_tokens` as special tokens (never split)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS.values(), IMAGE_TOKEN, *extra_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, extra_special_tokens={"image_token": IMAGE_TOKEN}, **SPECIAL_TOKENS
    )


@dataclass
class BridgeSize:
    """Dimensions of a BLIP-2 vision stack: ViT, Q-Former and query tokens."""

    vision_hidden: int = 96
    vision_layers: int = 2
    qformer_layers: int = 1
    heads: int = 4
    query_tokens: int = 8
    image_size: int = 64
    patch_size: int = 8


@dataclass
class ModelSize:
    """Dimensions of a small MLLM built from config."""

    hidden: int = 32
    layers: int = 4
    heads: int = 2
    ffn: int = 64
    vision_hidden: int = 32
    vision_layers: int = 1
    qformer_layers: int = 1
    query_tokens: int = 4
    image_size: int = 32
    patch_size: int = 8
    max_positions: int = 128

    @property
    def bridge(self) -> BridgeSize:
        """The vision-stack part of these sizes."""
        return BridgeSize(**{field.name: getattr(self, field.name) for field in fields(BridgeSize)})


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _decoder_sizes(tokenizer: PreTrainedTokenizerFast, size: ModelSize) -> dict[str, Any]:
    """The settings every decoder config here shares: vocabulary, sizes, positions and special tokens."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        max_position_embeddings=size.max_positions,
        **_token_ids(tokenizer),
    )


def _language_config(tokenizer: PreTrainedTokenizerFast, size: ModelSize, language: str) -> Any:
    common = dict(**_decoder_sizes(tokenizer, size), tie_word_embeddings=True)
    if language == "opt":
        return OPTConfig(ffn_dim=size.ffn, word_embed_proj_dim=size.hidden, dropout=0.0, **common)
    if language == "llama":
        return LlamaConfig(intermediate_size=size.ffn, num_key_value_heads=size.heads, **common)
    raise UserError(f"language model must be 'opt' or 'llama', not {language!r}")


def build_blip2(
    tokenizer: PreTrainedTokenizerFast,
    size: ModelSize,
    language: str = "opt",
) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    """A BLIP-2 with an OPT (BLIP-2 OPT) or LLaMA (MiniGPT-4 style) language model."""
    config = blip2_config(
        size.bridge,
        _language_config(tokenizer, size, language).to_dict(),
        tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = Blip2ForConditionalGeneration(config)
    init_bridge(model, size.bridge)
    return model, blip2_processor(tokenizer, size.bridge)


def blip2_config(bridge: BridgeSize, text_config: dict[str, Any], image_token_index: int) -> Blip2Config:
    """A BLIP-2 config: a vision stack of size `bridge` in front of the language model `text_config`."""
    # Blip2VisionConfig defaults to initializer_range=1e-10 (its weights always come from a checkpoint);
    # a model trained from scratch needs a real initialisation.
    vision = dict(
        initializer_range=INITIALIZER_RANGE,
        hidden_size=bridge.vision_hidden,
        intermediate_size=2 * bridge.vision_hidden,
        num_hidden_layers=bridge.vision_layers,
        num_attention_heads=bridge.heads,
        image_size=bridge.image_size,
        patch_size=bridge.patch_size,
    )
    qformer = dict(
        hidden_size=bridge.vision_hidden,
        intermediate_size=2 * bridge.vision_hidden,
        num_hidden_layers=bridge.qformer_layers,
        num_attention_heads=bridge.heads,
        encoder_hidden_size=bridge.vision_hidden,
        vocab_size=2,
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text_config,
        num_query_tokens=bridge.query_tokens,
        image_token_index=image_token_index,
    )
    config.architectures = ["Blip2ForConditionalGeneration"]
    return config


def blip2_processor(tokenizer: Any, bridge: BridgeSize) -> Blip2Processor:
    """BLIP-2's processor: bicubic resize to the vision stack's image size, CLIP normalisation."""
    image_processor = BlipImageProcessorPil(
        size={"height": bridge.image_size, "width": bridge.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,
    )
    return Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=bridge.query_tokens
    )


@torch.no_grad()
def init_bridge(model: Blip2ForConditionalGeneration, bridge: BridgeSize) -> None:
    """Initialise what transformers leaves unusable for training a vision stack from scratch."""
    # transformers leaves the query tokens at zero: identical queries never diverge
    model.query_tokens.normal_(std=INITIALIZER_RANGE)
    # A small ViT trained from scratch learns where things are only slowly from random position
    # embeddings; starting from a 2-D sine-cosine grid (as MAE does) gives it positions at once.
    embedding = model.vision_model.embeddings.position_embedding  # (1, 1 + patches, hidden)
    grid = bridge.image_size // bridge.patch_size
    embedding[0, 0] = 0.0
    embedding[0, 1:] = sincos_grid(grid, embedding.shape[-1])


def sincos_grid(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings of a side×side patch grid, row-major, (side², dim); dim % 4 == 0."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine grid needs a hidden size divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))  # (dim/4,)

    def axis(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim/2)

    rows, cols = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    return torch.cat([axis(rows.flatten()), axis(cols.flatten())], dim=1)


def build_llava(
    tokenizer: PreTrainedTokenizerFast,
    size: ModelSize,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA-1.5-style model: CLIP vision tower, MLP projector, LLaMA language model."""
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers + 1,
        num_attention_heads=size.heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.hidden,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=_language_config(tokenizer, size, "llama").to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
    )
    return LlavaForConditionalGeneration(config), processor


def build_qwen2vl(
    tokenizer: PreTrainedTokenizerFast, size: ModelSize
) -> tuple[Qwen2VLForConditionalGeneration, tuple[PreTrainedTokenizerFast, Qwen2VLImageProcessorPil]]:
    """A Qwen2-VL: its ViT with 2×2 patch merging, multimodal rotary positions and a Qwen2 language model.
    `tokenizer` must hold `QWEN2VL_TOKENS` (`train_tokenizer(..., extra_tokens=QWEN2VL_TOKENS)`).

    Its parts are the tokenizer and the image processor, not a `Qwen2VLProcessor` (whose video processor
    needs torchvision); images are resized to `size.image_size` squared."""
    token = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN2VL_TOKENS}
    if len(set(token.values())) != len(QWEN2VL_TOKENS) or tokenizer.unk_token_id in token.values():
        raise UserError(f"the tokenizer lacks some of Qwen2-VL's tokens {QWEN2VL_TOKENS}")
    head_dim = size.hidden // size.heads
    temporal = head_dim // 2 - 2 * (head_dim // 6)  # rotary pairs for time, height, width: sum head_dim / 2
    text = dict(
        **_decoder_sizes(tokenizer, size),
        intermediate_size=size.ffn,
        num_key_value_heads=size.heads,
        rope_scaling={"type": "mrope", "mrope_section": [temporal, head_dim // 6, head_dim // 6]},
        # Untied (as Qwen2-VL-7B): a random model with tied embeddings repeats the prompt's last token,
        # the newline after "assistant", and so never answers.
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=size.vision_layers,
        embed_dim=size.vision_hidden,
        hidden_size=size.hidden,
        num_heads=size.heads,
        patch_size=size.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token["<|image_pad|>"],
        video_token_id=token["<|video_pad|>"],
        vision_start_token_id=token["<|vision_start|>"],
        vision_end_token_id=token["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    pixels = size.image_size**2
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=size.patch_size, merge_size=2, temporal_patch_size=2
    )
    return Qwen2VLForConditionalGeneration(config), (tokenizer, image_processor)


def save_backbone(model: Any, processor: Any, path: str | Path) -> Path:
    """Save model and processor (or its parts: a tuple of tokenizer and image processor) as one
    transformers folder, as a hub snapshot would hold them."""
    path = Path(path)
    model.save_pretrained(path)
    for part in processor if isinstance(processor, tuple) else (processor,):
        part.save_pretrained(path)
    return path
