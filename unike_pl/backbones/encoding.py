"""Turn (image, prompt, target) examples into model inputs with target-only labels.

Input = rendered prompt + " " + target. Labels hold the target's token ids and -100 everywhere else
(prompt, image placeholders, padding), so the logit at position t predicts label t+1 as in
Hugging Face causal LMs. Sequences are right-padded; `prompt_length` marks where each target starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from unike_pl.backbones.layouts import MLLMLayout
from unike_pl.backbones.prompts import PromptFormat

IGNORE_INDEX = -100
EXAMPLES = "examples"
"""Key of an encoded batch that keeps its source `Example`s, for methods that re-encode the inputs (IKE)."""


@dataclass(frozen=True)
class Example:
    """One scored input: an optional image, a prompt and the answer to score."""

    prompt: str
    target: str
    image: Image.Image | None = None


class KeptExamples:
    """The source examples of an encoded batch. Not a `Sequence` on purpose: device transfers (Lightning's
    `apply_to_collection`) leave it alone instead of trying to rebuild its frozen examples."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.items = tuple(examples)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.items)

    def __getitem__(self, index: int | slice) -> Any:
        return KeptExamples(self.items[index]) if isinstance(index, slice) else self.items[index]


class PromptEncoder:
    """Tokenizes examples for one backbone: its tokenizer, image processor and prompt format."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        prompt_format: PromptFormat,
        config: Any,
        layout: MLLMLayout,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.prompt_format = prompt_format
        self.config = config
        self.layout = layout
        self.image_token_id = int(config.image_token_id)
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
        self.pad_token_id = int(pad)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tokenizer and the image processor into a model folder (what `load_encoder` reads)."""
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)

    def encode(
        self, examples: Sequence[Example], end_with_eos: bool = False, keep_examples: bool = False
    ) -> dict[str, Any]:
        """Encode a batch whose examples either all carry an image or none does.

        `end_with_eos` appends EOS to every target (as a label too): training data that teaches a model
        to stop after its answer. Scoring never uses it: scored labels are the target's tokens only.
        `keep_examples` keeps the examples under `EXAMPLES`, for methods that rewrite the inputs.
        """
        if not examples:
            raise ValueError("cannot encode an empty batch")
        with_image = examples[0].image is not None
        if any((ex.image is not None) != with_image for ex in examples):
            raise ValueError("a batch must be all multimodal or all text-only")
        image_inputs: dict[str, torch.Tensor] = {}
        counts = [0] * len(examples)
        if with_image:
            image_inputs = self.process_images([ex.image for ex in examples])  # type: ignore[misc]
            counts = self.layout.image_token_counts(self.config, image_inputs)
        rows = [self._encode_one(ex, count, end_with_eos) for ex, count in zip(examples, counts, strict=True)]
        encoded: dict[str, Any] = {**self._pad(rows), **image_inputs}
        if keep_examples:
            encoded[EXAMPLES] = KeptExamples(examples)
        return encoded

    def process_images(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        processed = self.image_processor(images=list(images), return_tensors="pt")
        return {name: processed[name] for name in self.layout.image_inputs}

    def prompt_ids(self, prompt: str, image_tokens: int) -> list[int]:
        """Token ids of the rendered prompt; `image_tokens` placeholders stand for the image (0 = none)."""
        ids: list[int] = []
        for piece in self.prompt_format.pieces(prompt, with_image=image_tokens > 0):
            if piece == "{bos}":
                if self.tokenizer.bos_token_id is None:
                    raise ValueError(f"prompt format {self.prompt_format.name!r} needs a BOS token")
                ids.append(int(self.tokenizer.bos_token_id))
            elif piece == "{image}":
                ids.extend([self.image_token_id] * image_tokens)
            else:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def target_ids(self, target: str) -> list[int]:
        ids = self.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target {target!r} has no tokens")
        return list(ids)

    def _encode_one(self, example: Example, image_tokens: int, end_with_eos: bool) -> tuple[list[int], int]:
        prompt = self.prompt_ids(example.prompt, image_tokens)
        target = self.target_ids(example.target)
        if end_with_eos:
            if self.tokenizer.eos_token_id is None:
                raise ValueError("end_with_eos needs a tokenizer with an EOS token")
            target.append(int(self.tokenizer.eos_token_id))
        return prompt + target, len(prompt)

    def _pad(self, rows: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, prompt_length) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        prompt_length = torch.tensor([p for _, p in rows], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "prompt_length": prompt_length,
        }


def sample_inputs(
    batch: Mapping[str, torch.Tensor],
    index: int,
    layout: MLLMLayout,
    config: Any,
) -> dict[str, torch.Tensor]:
    """The prompt of sample `index` alone (no target, no padding), with its image inputs."""
    selected = select_sample(batch, index, layout, config)
    prompt_length = int(batch["prompt_length"][index])
    inputs = {name: value for name, value in selected.items() if name in layout.image_inputs}
    inputs["input_ids"] = selected["input_ids"][:, :prompt_length]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


def select_sample(
    batch: Mapping[str, torch.Tensor],
    index: int,
    layout: MLLMLayout,
    config: Any,
) -> dict[str, torch.Tensor]:
    """Sample `index` of an encoded batch as a batch of one (padding and target kept)."""
    rows = slice(index, index + 1)
    selected = {
        name: batch[name][rows] for name in ("input_ids", "attention_mask", "labels", "prompt_length")
    }
    if EXAMPLES in batch:
        selected[EXAMPLES] = batch[EXAMPLES][rows]
    if layout.image_inputs[0] in batch:
        images = {name: batch[name] for name in layout.image_inputs}
        selected.update(layout.split_images(config, images)[index])
    return selected


def append_eos(batch: Mapping[str, torch.Tensor], eos_token_id: int) -> dict[str, torch.Tensor]:
    """The batch with EOS after every target, as one more target token (a model trained on it learns to
    stop after the answer). One column is added; image inputs are kept."""
    ends = batch["attention_mask"].sum(-1)  # first free position of each row
    rows = torch.arange(len(ends))
    pad = lambda t, value: torch.cat([t, t.new_full((len(t), 1), value)], dim=1)  # noqa: E731
    extended = dict(batch)
    extended["input_ids"] = pad(batch["input_ids"], eos_token_id)
    extended["attention_mask"] = pad(batch["attention_mask"], 0)
    extended["labels"] = pad(batch["labels"], IGNORE_INDEX)
    extended["input_ids"][rows, ends] = eos_token_id
    extended["attention_mask"][rows, ends] = 1
    extended["labels"][rows, ends] = eos_token_id
    return extended


def on_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """An encoded batch with its tensors on `device` (kept examples and other entries as they are)."""
    return {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}
