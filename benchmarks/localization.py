"""LDKE's fast layer scorers against causal tracing on the embedded world: agreement and cost per fact.

    OMP_NUM_THREADS=1 python benchmarks/localization.py --records 50

For each of the first --records edit records, the fact located is the one the model holds: its own
greedy answer to the edit question with the edit image (`own_answer_fact`). Every decoder layer is scored
by causal tracing (the reference, --samples noise samples) and by each fast scorer. Prints, per fast
scorer, how often its top-1 / top-2 layers are the reference's (and the chance level), the mean rank
correlation, which layers each scorer puts first, and the median seconds per fact with the ratio to
causal tracing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict

import torch

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.backbones.encoding import EXAMPLES
from unike_pl.data.cases import open_image
from unike_pl.data.mmedit import read_mmedit
from unike_pl.ldke import LocalizationConfig, agreement, layer_scores, own_answer_fact

REFERENCE = "causal_tracing"
FAST = {"attribution": 1, "gradient_activation": 1}
"""Fast scorers and their noise samples."""


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (no ties expected in real-valued scores)."""
    ranks = [x.argsort().argsort().float() for x in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def timed_scores(backbone, fact, layers, config) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    scores = layer_scores(backbone, fact, layers, config)
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/world-blip2")
    parser.add_argument("--eval-file", default="data/world/vqa/vqa_eval.json")
    parser.add_argument("--image-root", default="data/world/images")
    parser.add_argument("--rephrase-image-root", default="data/world/images_rephrase")
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5, help="noise samples of causal tracing")
    parser.add_argument("--noise", type=float, default=3.0, help="corruption, in std of the image states")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(BackboneConfig(args.model, local_files_only=True))
    split = read_mmedit(args.eval_file, "vqa", args.image_root, args.rephrase_image_root)
    layers = list(range(backbone.num_layers))
    configs = {
        name: LocalizationConfig(name, noise=args.noise, samples=samples)
        for name, samples in {**FAST, REFERENCE: args.samples}.items()
    }
    seconds: dict[str, list[float]] = defaultdict(list)
    firsts: dict[str, Counter[int]] = defaultdict(Counter)
    top1: dict[str, list[float]] = defaultdict(list)
    top2: dict[str, list[float]] = defaultdict(list)
    correlations: dict[str, list[float]] = defaultdict(list)
    same_as_pred = 0
    records = split.records[: args.records]
    for record in records:
        image = open_image(record.image, split.file, record.index, "image")
        edit = backbone.encoder.encode([Example(record.src, record.alt, image)], keep_examples=True)
        fact = own_answer_fact(backbone, edit)
        same_as_pred += fact[EXAMPLES][0].target == record.pred
        scores = {}
        for name, config in configs.items():
            scores[name], elapsed = timed_scores(backbone, fact, layers, config)
            seconds[name].append(elapsed)
            firsts[name][int(scores[name].argmax())] += 1
        for name in FAST:
            top1[name].append(agreement(scores[name], scores[REFERENCE], 1))
            top2[name].append(agreement(scores[name], scores[REFERENCE], 2))
            correlations[name].append(rank_correlation(scores[name], scores[REFERENCE]))
    median = {name: statistics.median(times) for name, times in seconds.items()}
    count = len(layers)
    print(
        f"facts: {len(records)} (own answer = record.pred in {same_as_pred}), layers: {count}, "
        f"noise: {args.noise}, noise samples: causal tracing {args.samples}, "
        f"attribution {FAST['attribution']}"
    )
    print(f"chance: top-1 {100 / count:.1f} %, top-2 {200 / count:.1f} %")
    print(f"{REFERENCE}: median {median[REFERENCE]:.4f} s / fact")
    for name in FAST:
        print(
            f"{name}: top-1 {100 * statistics.mean(top1[name]):.1f} %, "
            f"top-2 {100 * statistics.mean(top2[name]):.1f} %, "
            f"rank correlation {statistics.mean(correlations[name]):.2f}, "
            f"median {median[name]:.4f} s / fact ({median[REFERENCE] / median[name]:.1f}x faster)"
        )
    for name, counts in firsts.items():
        print(f"best layer by {name}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
