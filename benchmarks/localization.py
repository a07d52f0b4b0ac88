"""LDKE's fast localization against causal tracing on the embedded world: agreement and cost per fact.

    python benchmarks/localization.py --records 50

For each of the first --records edit records, the fact located is the one the model holds: its own
(hallucinated) answer `pred` to the edit question with the edit image. Prints how often the fast scorer's
top-1 / top-2 layers are causal tracing's, their mean rank correlation, which layers each picks first, and
the median seconds per fact of both scorers with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.data.cases import open_image
from unike_pl.data.mmedit import read_mmedit
from unike_pl.ldke import agreement, causal_tracing_scores, gradient_activation_scores


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().float() for x in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/world-blip2")
    parser.add_argument("--eval-file", default="data/world/vqa/vqa_eval.json")
    parser.add_argument("--image-root", default="data/world/images")
    parser.add_argument("--rephrase-image-root", default="data/world/images_rephrase")
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5, help="noise samples of causal tracing")
    args = parser.parse_args()
    backbone = load_backbone(BackboneConfig(args.model, local_files_only=True))
    split = read_mmedit(args.eval_file, "vqa", args.image_root, args.rephrase_image_root)
    times: dict[str, list[float]] = {"fast": [], "tracing": []}
    top1, top2, correlations, firsts = [], [], [], {"fast": Counter(), "tracing": Counter()}
    for record in split.records[: args.records]:
        image = open_image(record.image, split.file, record.index, "image")
        inputs = backbone.encoder.encode([Example(record.src, record.pred, image)])
        start = time.perf_counter()
        fast = gradient_activation_scores(backbone, inputs)
        times["fast"].append(time.perf_counter() - start)
        start = time.perf_counter()
        tracing = causal_tracing_scores(backbone, inputs, samples=args.samples)
        times["tracing"].append(time.perf_counter() - start)
        top1.append(agreement(fast, tracing, 1))
        top2.append(agreement(fast, tracing, 2))
        correlations.append(rank_correlation(fast, tracing))
        firsts["fast"][int(fast.argmax())] += 1
        firsts["tracing"][int(tracing.argmax())] += 1
    fast_s, tracing_s = statistics.median(times["fast"]), statistics.median(times["tracing"])
    print(f"facts: {len(top1)}, layers: {backbone.num_layers}, causal-tracing noise samples: {args.samples}")
    print(f"top-1 agreement {100 * statistics.mean(top1):.1f} %, top-2 {100 * statistics.mean(top2):.1f} %")
    print(f"mean rank correlation {statistics.mean(correlations):.2f}")
    for name, counts in firsts.items():
        print(f"best layer by {name}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(
        f"median s / fact: fast {fast_s:.4f}, causal tracing {tracing_s:.4f}, ratio {tracing_s / fast_s:.1f}x"
    )


if __name__ == "__main__":
    main()
