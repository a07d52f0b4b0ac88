"""The five evaluation cases of one MMEdit record, its neighbour cases (the world's LDKE fields), and their
batching."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from unike_pl import case_names as names
from unike_pl.backbones.encoding import Example, PromptEncoder, select_sample
from unike_pl.backbones.prompts import wrap_question
from unike_pl.data.mmedit import EditRecord, MMEditFormatError, MMEditSplit
from unike_pl.errors import UserError
from unike_pl.settings import require_positive


def open_image(path: Path, file: Path, record: int, field: str) -> Image.Image:
    """Load an RGB image; unreadable images are reported with their record and field."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise MMEditFormatError(file, f"cannot read image {path}: {error}", record, field) from None


@dataclass(frozen=True)
class EditSample:
    """An edit descriptor and its neighbours: `cases` maps each case name to its scored example,
    `neighbours` each neighbour case name to a list of examples (empty when the record has none), and
    `group` the record's labelled group (None when it has none)."""

    record: int
    cases: dict[str, Example]
    neighbours: dict[str, list[Example]]
    group: str | None = None


def wrapped_cases(task: str, use_template: bool) -> list[str]:
    """The cases whose questions take the `Question: {} Short answer:` wrapper (with `use_template`):
    the VQA questions, i.e. the edit prompts of E-VQA (src, rephrase), and on either task the multimodal
    locality question, the related questions and the hard neighbours; caption prompts and the
    text-locality question never do."""
    if not use_template:
        return []
    edit = [names.EDIT, names.REPHRASE, names.IMAGE_REPHRASE] if task == "vqa" else []
    return [*edit, names.MULTIMODAL_LOCALITY, names.RELATED, names.HARD_NEIGHBOURS]


def build_case(
    record: EditRecord, case: str, task: str, use_template: bool, load: Callable[[Path, str], Image.Image]
) -> Example:
    """One of the five examples of a record (reading only its own image), its question wrapped as
    `wrapped_cases` says."""
    if case == names.TEXT_LOCALITY:
        return Example(record.loc, record.loc_ans, None)
    wrap = case in wrapped_cases(task, use_template)
    if case == names.MULTIMODAL_LOCALITY:
        return Example(wrap_question(record.m_loc_q, wrap), record.m_loc_a, load(record.m_loc, "m_loc"))
    if case not in names.TARGET_CASES:
        raise ValueError(f"no case {case!r}; the cases are {', '.join(names.CASES)}")
    prompt = record.rephrase if case == names.REPHRASE else record.src
    if case == names.IMAGE_REPHRASE:
        image = load(record.image_rephrase, "image_rephrase")
    else:
        image = load(record.image, "image")
    return Example(wrap_question(prompt, wrap), record.alt, image)


def build_cases(
    record: EditRecord, task: str, use_template: bool, load: Callable[[Path, str], Image.Image]
) -> dict[str, Example]:
    """Edit, rephrase, image-rephrase, text-locality and multimodal-locality examples of a record."""
    return {case: build_case(record, case, task, use_template, load) for case in names.CASES}


def build_neighbours(
    record: EditRecord, task: str, use_template: bool, load: Callable[[Path, str], Image.Image]
) -> dict[str, list[Example]]:
    """The record's related questions (on the edit image, answered with the truth the edit implies) and
    hard out-of-scope neighbours (their own images and answers). Both are VQA questions, wrapped like
    `m_loc_q`; a neighbour that repeats the edit prompt (a similar scene asked the same) is wrapped
    like the edit prompt."""
    image = load(record.image, "image") if record.related else None
    wrapped = wrapped_cases(task, use_template)

    def wrap(question: str) -> str:
        return wrap_question(question, names.EDIT in wrapped if question == record.src else use_template)

    return {
        names.RELATED: [Example(wrap(pair.question), pair.answer, image) for pair in record.related],
        names.HARD_NEIGHBOURS: [
            Example(wrap(item.question), item.answer, load(item.image, "hard_loc"))
            for item in record.hard_loc
        ],
    }


class MMEditDataset(Dataset):
    """Serves `EditSample`s of one split; images are read when a sample is requested."""

    def __init__(self, split: MMEditSplit, use_template: bool, limit: int | None = None) -> None:
        require_positive("data", limit=limit)
        self.split = split
        self.use_template = use_template
        self.records = split.records[:limit] if limit else split.records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def record_groups(self) -> list[str | None]:
        """The group of every served record, in order (read without loading images)."""
        return [record.group for record in self.records]

    def _loader(self, record: EditRecord) -> Callable[[Path, str], Image.Image]:
        """Reads the record's images, each once (the edit and its rephrase share one)."""

        @functools.cache
        def load(path: Path, field: str) -> Image.Image:
            return open_image(path, self.split.file, record.index, field)

        return load

    def case(self, position: int, case: str) -> Example:
        """One example of a record (only its own image read): what a memory question needs."""
        record = self.records[position]
        return build_case(record, case, self.split.task, self.use_template, self._loader(record))

    def __getitem__(self, position: int) -> EditSample:
        record = self.records[position]
        load = self._loader(record)
        return EditSample(
            record.index,
            build_cases(record, self.split.task, self.use_template, load),
            build_neighbours(record, self.split.task, self.use_template, load),
            record.group,
        )


class CrossTaskDataset(Dataset):
    """Cross-task editing: a stream where every `every`-th edit comes from a second task's split
    (MMEdit's protocol mixes 1 caption edit for 2 VQA edits: every=3). Records are numbered by their
    place in the stream; the stream ends when either split runs out."""

    def __init__(self, main: MMEditDataset, mixed: MMEditDataset, every: int = 3) -> None:
        if every < 2:
            raise UserError(f"every must be >= 2 (one mixed edit per `every`), got {every}")
        self.main, self.mixed, self.every = main, mixed, every
        self.length = min(len(main) * every // (every - 1), len(mixed) * every)

    def __len__(self) -> int:
        return self.length

    def _source(self, position: int) -> tuple[MMEditDataset, int]:
        """The split that stream position `position` comes from, and the position in that split."""
        rounds, offset = divmod(position, self.every)
        if offset == self.every - 1:
            return self.mixed, rounds
        return self.main, rounds * (self.every - 1) + offset

    def __getitem__(self, position: int) -> EditSample:
        dataset, index = self._source(position)
        sample = dataset[index]
        return EditSample(position, sample.cases, sample.neighbours, sample.group)

    @property
    def record_groups(self) -> list[str | None]:
        """The group of every record of the stream, in order."""
        main, mixed = self.main.record_groups, self.mixed.record_groups
        return [
            (mixed if dataset is self.mixed else main)[index]
            for dataset, index in map(self._source, range(len(self)))
        ]


@dataclass
class EditBatch:
    """Edit records as the loops read them: per case one encoded batch over the records (`cases[case]`:
    input ids, labels, pixels, prompt lengths and the examples), their raw targets (for generation), and
    per neighbour case one encoded batch per record (None where it has none)."""

    record: torch.Tensor
    """(records,): each record's number in its split (or its place in a cross-task stream)."""
    group: list[str | None]
    """Each record's labelled group (None where the data has none)."""
    cases: dict[str, dict[str, Any]]
    targets: dict[str, list[str]]
    neighbours: dict[str, list[dict[str, Any] | None]]

    def __len__(self) -> int:
        return len(self.record)

    def select(self, index: int, encoder: PromptEncoder) -> EditBatch:
        """Record `index` as a batch of one, every case included."""
        return EditBatch(
            self.record[index : index + 1],
            self.group[index : index + 1],
            {
                case: select_sample(encoded, index, encoder.layout, encoder.config)
                for case, encoded in self.cases.items()
            },
            {case: targets[index : index + 1] for case, targets in self.targets.items()},
            {case: groups[index : index + 1] for case, groups in self.neighbours.items()},
        )


class EditCollator:
    """Batches samples into an `EditBatch`: one encoded batch per case, with the raw targets kept for
    generation; neighbour cases stay per record."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder

    def __call__(self, samples: Sequence[EditSample]) -> EditBatch:
        return EditBatch(
            record=torch.tensor([s.record for s in samples]),
            group=[s.group for s in samples],
            cases={
                case: self.encoder.encode([s.cases[case] for s in samples], keep_examples=True)
                for case in names.CASES
            },
            targets={case: [s.cases[case].target for s in samples] for case in names.CASES},
            neighbours={
                case: [
                    self.encoder.encode(s.neighbours[case], keep_examples=True)
                    if s.neighbours[case]
                    else None
                    for s in samples
                ]
                for case in names.NEIGHBOUR_CASES
            },
        )
