"""Prompt formats: how each backbone wraps an image and a question into one token sequence.

A template holds three markers: `{bos}` (the tokenizer's BOS id), `{image}` (the image placeholder
tokens, one per visual embedding) and `{prompt}` (the question or caption prompt). Everything else
is literal text. The target is always appended as `" " + target` after the rendered prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unike_pl.errors import UserError

MARKERS = re.compile(r"(\{bos\}|\{image\}|\{prompt\})")

VQA_TEMPLATE = "Question: {} Short answer:"
"""The optional question wrapper of BLIP-2 VQA evaluation; results with and without it differ."""


@dataclass(frozen=True)
class PromptFormat:
    """How one backbone lays out image, prompt and BOS."""

    name: str
    multimodal: str
    """Template for inputs with an image; must contain `{image}` and `{prompt}`."""
    text_only: str
    """Template for text-only inputs (text locality); must contain `{prompt}` and no `{image}`."""

    def __post_init__(self) -> None:
        for marker in ("{image}", "{prompt}"):
            if self.multimodal.count(marker) != 1:
                raise UserError(f"prompt format {self.name!r}: multimodal template needs one {marker}")
        if self.text_only.count("{prompt}") != 1 or "{image}" in self.text_only:
            raise UserError(
                f"prompt format {self.name!r}: text-only template needs one {{prompt}}, no {{image}}"
            )

    def pieces(self, prompt: str, with_image: bool) -> list[str]:
        """The template split into literal text (prompt substituted), `{bos}` and `{image}` markers."""
        template = self.multimodal if with_image else self.text_only
        parts = []
        for part in MARKERS.split(template):
            if part == "{prompt}":
                part = prompt
            if part:
                parts.append(part)
        return _merge_text(parts)


def _merge_text(parts: list[str]) -> list[str]:
    """Join neighbouring literal pieces so that each run of text is tokenized once."""
    merged: list[str] = []
    for part in parts:
        if merged and part not in ("{bos}", "{image}") and merged[-1] not in ("{bos}", "{image}"):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


PROMPT_FORMATS: dict[str, PromptFormat] = {
    fmt.name: fmt
    for fmt in (
        # BLIP-2 puts the query embeddings before BOS, as its processor and LAVIS do.
        PromptFormat("blip2", multimodal="{image}{bos}{prompt}", text_only="{bos}{prompt}"),
        # MiniGPT-4: BLIP-2 vision stack + Vicuna, with its chat wrapper around the image.
        PromptFormat(
            "minigpt4",
            multimodal="{bos}###Human: <Img>{image}</Img> {prompt} ###Assistant:",
            text_only="{bos}###Human: {prompt} ###Assistant:",
        ),
        PromptFormat(
            "llava15",
            multimodal="{bos}USER: {image}\n{prompt} ASSISTANT:",
            text_only="{bos}USER: {prompt} ASSISTANT:",
        ),
        # SmolLM2-135M-Instruct inside BLIP-2 (the SmolLM2 embedded model): its chat template makes it answer
        # in sentences, while the plain QA wrapper gets a short answer first. Text-only questions carry one
        # worked example, which doubles the factual questions it answers exactly (55 vs 22 of 129 measured).
        PromptFormat(
            "smollm2",
            multimodal="{image}Question: {prompt} Short answer:",
            text_only="Question: What is the largest city in the United States? Short answer: New York\n"
            "Question: {prompt} Short answer:",
        ),
        PromptFormat(
            "qwen2vl",
            multimodal="<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n",
            text_only="<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
        ),
    )
}


def get_prompt_format(name: str) -> PromptFormat:
    try:
        return PROMPT_FORMATS[name]
    except KeyError:
        raise UserError(f"unknown prompt format {name!r}; known: {sorted(PROMPT_FORMATS)}") from None


def wrap_question(question: str, use_template: bool) -> str:
    """Apply the optional `Question: {} Short answer:` wrapper to a VQA question."""
    return VQA_TEMPLATE.format(question) if use_template else question
