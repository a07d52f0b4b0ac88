"""Load a multimodal LLM (hub id or local folder) and expose its editable parts by role, not by name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.activations import ACT2FN

from unike_pl.backbones.assembly import assemble_if_needed
from unike_pl.backbones.decoding import greedy_answers
from unike_pl.backbones.encoding import PromptEncoder
from unike_pl.backbones.layouts import DecoderLayout, MLLMLayout, decoder_layout, mllm_layout
from unike_pl.backbones.prompts import get_prompt_format
from unike_pl.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BackboneConfig:
    """Which multimodal model to load and how to prompt it."""

    name_or_path: str
    """A Hugging Face hub id or a local model folder (saved with `save_pretrained`, processor included)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    prompt_format: str | None = None
    """Prompt wrapper (blip2, minigpt4, llava15, qwen2vl); None picks the backbone's own."""
    local_files_only: bool = False
    """Never contact the hub (set this on machines without network)."""
    assemble_from: str | None = None
    """A bridge folder (`bridge.json` + `bridge.safetensors`): `name_or_path` is then a local cache folder,
    assembled from the bridge and the installed language-model package when it does not hold that model."""


def ensure_available(config: BackboneConfig) -> None:
    """Assemble the model folder first when the config says it is built from a shipped bridge."""
    if config.assemble_from is not None:
        assemble_if_needed(config.name_or_path, config.assemble_from)


def resolve_layout(hf_config: Any) -> tuple[str, MLLMLayout]:
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise UserError("the model config names no architecture; save the model with save_pretrained")
    return architectures[0], mllm_layout(architectures[0])


def load_encoder(config: BackboneConfig, hf_config: Any | None = None) -> PromptEncoder:
    """The tokenizer, image processor and prompt format of a backbone, without its weights."""
    ensure_available(config)
    if hf_config is None:
        hf_config = AutoConfig.from_pretrained(config.name_or_path, local_files_only=config.local_files_only)
    _, layout = resolve_layout(hf_config)
    # The tokenizer and the image processor, not AutoProcessor: a processor also builds the parts this
    # project never uses (Qwen2-VL's video processor, which needs torchvision).
    tokenizer = AutoTokenizer.from_pretrained(config.name_or_path, local_files_only=config.local_files_only)
    image_processor = AutoImageProcessor.from_pretrained(
        config.name_or_path, local_files_only=config.local_files_only
    )
    text_type = hf_config.text_config.model_type
    format_name = config.prompt_format or layout.prompt_format_for(text_type)
    if format_name is None:
        raise UserError(f"no default prompt format for language model type {text_type!r}; set prompt_format")
    return PromptEncoder(tokenizer, image_processor, get_prompt_format(format_name), hf_config, layout)


def load_backbone(config: BackboneConfig) -> Backbone:
    """Load weights and processor of a supported MLLM, in eval mode with all weights frozen."""
    if config.dtype not in DTYPES:
        raise UserError(f"dtype {config.dtype!r} is not one of {sorted(DTYPES)}")
    ensure_available(config)
    hf_config = AutoConfig.from_pretrained(config.name_or_path, local_files_only=config.local_files_only)
    architecture, _ = resolve_layout(hf_config)
    model_class = getattr(transformers, architecture)
    model = model_class.from_pretrained(
        config.name_or_path, dtype=DTYPES[config.dtype], local_files_only=config.local_files_only
    )
    return Backbone(model, load_encoder(config, model.config))


class Backbone(nn.Module):
    """A frozen MLLM with its prompt encoder, addressed through the layout tables."""

    def __init__(self, model: nn.Module, encoder: PromptEncoder) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.encoder = encoder
        self.layout: MLLMLayout = encoder.layout
        self.language_model = model.get_submodule(self.layout.language_model)
        self.decoder: DecoderLayout = decoder_layout(type(self.language_model).__name__)
        self.prompt_lengths: torch.Tensor | None = None

    # --- structure -------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.get_submodule(self.decoder.layers)  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.language_model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """Longest sequence (image tokens included) the language model takes."""
        return int(self.language_model.config.max_position_embeddings)

    def last_layers(self, count: int) -> list[int]:
        """Indices of the last `count` decoder layers (UniKE edits the last 4)."""
        if not 0 < count <= self.num_layers:
            raise UserError(f"cannot take the last {count} of {self.num_layers} layers")
        return list(range(self.num_layers - count, self.num_layers))

    def layer_part(self, index: int, path: str) -> nn.Module:
        """A submodule of decoder layer `index`, e.g. `layer_part(i, backbone.decoder.ffn_value)`."""
        return self.layers[index].get_submodule(path)

    def ffn_activation(self) -> nn.Module:
        return ACT2FN[getattr(self.language_model.config, self.decoder.activation)]

    def optional_part(self, path: str | None) -> nn.Module | None:
        """A submodule of the language model that some configs leave unset (None)."""
        if path is None:
            return None
        module: Any = self.language_model
        for name in path.split("."):
            module = getattr(module, name, None)
        return module if isinstance(module, nn.Module) else None

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last decoder layer's output: final norm, optional projection, LM head."""
        hidden = self.language_model.get_submodule(self.decoder.final_norm)(hidden)
        projection = self.optional_part(self.decoder.output_projection)
        if projection is not None:
            hidden = projection(hidden)
        return self.model.get_submodule(self.layout.lm_head)(hidden)

    @contextmanager
    def reading(self, prompt_lengths: torch.Tensor | None) -> Iterator[None]:
        """Publish a batch's prompt lengths while it runs: hooks that act on "the last input token"
        (the last prompt token, whose state sums up the question) read `prompt_lengths`."""
        previous, self.prompt_lengths = self.prompt_lengths, prompt_lengths
        try:
            yield
        finally:
            self.prompt_lengths = previous

    # --- running ---------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits (batch, seq, vocab) for an encoded batch, with or without images."""
        # No key-value cache: every call is a full forward (generation here recomputes the prefix).
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "use_cache": False,
        }
        if self.layout.image_inputs[0] in batch:
            inputs.update({name: batch[name] for name in self.layout.image_inputs})
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            if self.layout.marks_image_tokens:
                inputs["mm_token_type_ids"] = (batch["input_ids"] == self.encoder.image_token_id).int()
            module = self.model
        else:
            module = self.model.get_submodule(self.layout.text_forward)
        with self.reading(batch.get("prompt_length")):
            return module(**inputs).logits

    def generate_answers(self, batch: Mapping[str, torch.Tensor], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to each prompt of the batch (its targets are ignored): `greedy_answers`."""
        return greedy_answers(self, batch, max_new_tokens)
