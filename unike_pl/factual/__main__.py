"""Keep the factual questions a model answers correctly (teacher-forced exact match, text only).

Usage: `python -m unike_pl.factual --candidates data/factual_loc/candidates.jsonl
--out data/factual_loc/questions.jsonl --model checkpoints/world-smollm2
--assemble-from checkpoints/smollm2-bridge --prompt-format smollm2`.

Each question is scored as T-Locality inputs are: the backbone's text-only prompt format, input = prompt +
" " + answer, and the project's exact-match scorer (every answer token is the argmax).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from unike_pl.backbones.encoding import Example
from unike_pl.backbones.loader import Backbone, BackboneConfig, load_backbone
from unike_pl.errors import exit_on_user_error
from unike_pl.factual import read_questions, to_jsonl
from unike_pl.io import atomic_write_text
from unike_pl.metrics.scorers import exact_match


@torch.no_grad()
def answered(backbone: Backbone, questions: list[dict[str, str]], batch_size: int = 16) -> list[bool]:
    """Whether the model gets each answer exactly, teacher-forced, from the question alone."""
    known: list[bool] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        batch = backbone.encoder.encode([Example(q["loc"], q["loc_ans"]) for q in chunk])
        known.extend(bool(score) for score in exact_match(backbone(batch), batch["labels"]))
    return known


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unike_pl.factual", description=__doc__)
    parser.add_argument("--candidates", required=True, help="JSON Lines file of loc / loc_ans pairs")
    parser.add_argument("--out", required=True, help="JSON Lines file to write the answered pairs to")
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--assemble-from", default=None, help="bridge folder the model is assembled from")
    parser.add_argument("--prompt-format", default=None, help="prompt format (default: the backbone's own)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    questions = read_questions(args.candidates)
    config = BackboneConfig(
        args.model, prompt_format=args.prompt_format, local_files_only=True, assemble_from=args.assemble_from
    )
    known = answered(load_backbone(config), questions)
    kept = [question for question, ok in zip(questions, known, strict=True) if ok]
    atomic_write_text(args.out, to_jsonl(kept))
    print(f"kept {len(kept)} of {len(questions)} questions in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main)())
