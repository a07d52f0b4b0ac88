"""Inputs per second of mining the knowledge memory: the batched greedy decoder against the previous one
(each wrong answer decoded alone), on the same chunks of the embedded world.

    python benchmarks/mining_speed.py                # the first 2 chunks of 64 records of each source
    python benchmarks/mining_speed.py --chunks 4 --repeats 3

Mining reads every case of every record (5 per record) and decodes the model's answer where it is wrong.
Prints, per decoder, the median seconds per chunk and the inputs per second, the ratio of the two, and
whether both mined the same triplets (they must).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from unike_pl.backbones import BackboneConfig, load_backbone
from unike_pl.backbones.decoding import greedy_answers_one_by_one
from unike_pl.knowledge.cache import MemoryConfig, source_datasets
from unike_pl.knowledge.mining import mine_memory


def mine(backbone, layers, chunks, max_new_tokens):
    """Seconds of each chunk and the triplets mined."""
    seconds, triplets = [], []
    for samples, file in chunks:
        start = time.perf_counter()
        memory = mine_memory(backbone, layers, samples, file, max_new_tokens)
        seconds.append(time.perf_counter() - start)
        triplets += memory.triplets
    return seconds, triplets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/world-blip2")
    parser.add_argument("--root", default="data/world")
    parser.add_argument("--chunks", type=int, default=2, help="chunks of each source")
    parser.add_argument("--chunk-records", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    backbone = load_backbone(BackboneConfig(args.model, local_files_only=True))
    config = MemoryConfig().under(args.root)
    layers = backbone.last_layers(config.edited_layers)
    size = args.chunk_records
    chunks = [
        ([dataset[i] for i in range(start, min(start + size, len(dataset)))], source.file)
        for source, dataset in zip(config.sources, source_datasets(config), strict=True)
        for start in range(0, min(len(dataset), args.chunks * size), size)
    ]
    inputs = 5 * sum(len(samples) for samples, _ in chunks)
    print(f"{len(chunks)} chunks, {inputs} inputs, {torch.get_num_threads()} threads")
    results = {}
    for name in ("one by one", "batched"):
        runs = []
        for _ in range(args.repeats):
            if name == "one by one":
                with mock.patch.object(type(backbone), "generate_answers", greedy_answers_one_by_one):
                    runs.append(mine(backbone, layers, chunks, config.max_new_tokens))
            else:
                runs.append(mine(backbone, layers, chunks, config.max_new_tokens))
        per_chunk = statistics.median(s for seconds, _ in runs for s in seconds)
        total = statistics.median(sum(seconds) for seconds, _ in runs)
        results[name] = (total, runs[0][1])
        print(f"{name:>10}: {per_chunk:.2f} s per chunk (median), {inputs / total:.1f} inputs/s")
    ratio = results["one by one"][0] / results["batched"][0]
    same = results["one by one"][1] == results["batched"][1]
    print(f"batched is {ratio:.1f}x faster; same triplets: {same} ({len(results['batched'][1])})")


if __name__ == "__main__":
    main()
