"""Backbones: loading MLLMs through transformers and addressing their parts through layout tables."""

from unike_pl.backbones.encoding import IGNORE_INDEX, Example, PromptEncoder
from unike_pl.backbones.layouts import DECODER_LAYOUTS, MLLM_LAYOUTS, DecoderLayout, MLLMLayout
from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone, load_encoder
from unike_pl.backbones.prompts import PROMPT_FORMATS, PromptFormat, get_prompt_format, wrap_question

__all__ = [
    "DECODER_LAYOUTS",
    "IGNORE_INDEX",
    "MLLM_LAYOUTS",
    "PROMPT_FORMATS",
    "Backbone",
    "BackboneConfig",
    "DecoderLayout",
    "Example",
    "MLLMLayout",
    "PromptEncoder",
    "PromptFormat",
    "get_prompt_format",
    "load_backbone",
    "load_encoder",
    "wrap_question",
]
