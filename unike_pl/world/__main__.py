"""Generate the synthetic world.

Usage: `python -m unike_pl.world --root data/world --seed 0 [--scale small|default] [--overwrite]
[--text-locality data/factual_loc/questions.jsonl]`; `python -m unike_pl.world --root data/world
--check-leakage` prints how much of each eval split the training splits give away, per group of edits
(exit code 1 if any unseen-rule edit leaks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from unike_pl.errors import exit_on_user_error
from unike_pl.world.generate import SCALES, generate_world, world_status
from unike_pl.world.leakage import check_leakage, format_report, unseen_leaks
from unike_pl.world.manifest import WorldError, load_manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unike_pl.world", description=__doc__)
    parser.add_argument("--root", required=True, help="folder to write the world into (e.g. data/world)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives the same bytes")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="how much to generate")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images, in pixels")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: automatic)")
    parser.add_argument(
        "--text-locality",
        default=None,
        help="JSON Lines file of real loc / loc_ans questions to use as the records' text locality",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace whatever --root holds")
    parser.add_argument(
        "--check-leakage",
        action="store_true",
        help="do not generate: print the eval/training overlap of the world at --root per group of edits",
    )
    return parser


def _check_leakage(root: str) -> int:
    try:
        load_manifest(root)
    except WorldError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = check_leakage(root)
    print(format_report(report))
    leaks = unseen_leaks(report)
    if leaks:
        print(f"error: unseen-rule eval records leak by {leaks} route(s)", file=sys.stderr)
        return 1
    print("unseen-rule eval records: no overlap with the training splits")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_leakage:
        return _check_leakage(args.root)
    status = world_status(args.root, args.seed, args.scale, args.image_size, args.text_locality)
    if status == "up_to_date" and not args.overwrite:
        print(
            f"world at {args.root} is up to date (seed {args.seed}, scale {args.scale}, "
            f"image size {args.image_size}); nothing to do"
        )
        return 0
    start = time.perf_counter()
    try:
        manifest = generate_world(
            args.root,
            seed=args.seed,
            scale=args.scale,
            image_size=args.image_size,
            overwrite=args.overwrite,
            workers=args.workers,
            text_locality=args.text_locality,
        )
    except WorldError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    splits = ", ".join(
        f"{name} {info.get('records', info.get('examples'))}" for name, info in manifest["splits"].items()
    )
    counts = manifest["counts"]
    confused = manifest["splits"]["pretrain_train"]["confused_fraction"]
    print(
        f"wrote world to {args.root} in {seconds:.1f} s: {splits}; {counts['images']} images, "
        f"{counts['rephrase_images']} rephrase images, {counts['entities']} entities, "
        f"{counts['facts']} facts; confused share of pretraining image QA {confused:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main)())
