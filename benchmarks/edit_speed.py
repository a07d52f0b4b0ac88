"""Seconds per edit of UniKE's neuron training through the frozen-prefix tail versus the full model.

    python benchmarks/edit_speed.py                                  # the embedded world model, CPU
    python benchmarks/edit_speed.py --architecture blip2-opt-2.7b    # full-size BLIP-2 OPT-2.7B shapes,
                                                                     # random weights (GPU advised)
Every edit runs exactly --steps optimisation steps (no early stop) so both paths do the same work.
Prints the median seconds per edit of each path, their ratio and, on a GPU, the peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from PIL import Image

from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.backbones.factory import save_backbone, train_tokenizer
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.unrelated import UnrelatedInputs

FULL_SIZE = {
    # BLIP-2 OPT-2.7B: EVA ViT-g/14 at 224 px, a 12-layer Q-Former with 32 queries, OPT-2.7B.
    "blip2-opt-2.7b": {
        "vision_config": dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "qformer_config": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            encoder_hidden_size=1408,
        ),
        "text_config": dict(
            model_type="opt",
            hidden_size=2560,
            ffn_dim=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            word_embed_proj_dim=2560,
            max_position_embeddings=2048,
        ),
        "num_query_tokens": 32,
    },
}


def random_full_size(name: str, folder: str, device: str) -> Backbone:
    """A model with the published architecture and random weights, saved and reopened by the loader."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    spec = FULL_SIZE[name]
    tokenizer = train_tokenizer(["what colour is the object? red", "a photo of two blue stars"] * 50, 300)
    text = {
        **spec["text_config"],
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = Blip2Config(
        vision_config=spec["vision_config"],
        qformer_config=spec["qformer_config"],
        text_config=text,
        num_query_tokens=spec["num_query_tokens"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    config.architectures = ["Blip2ForConditionalGeneration"]
    with torch.device(device):
        model = Blip2ForConditionalGeneration(config).half()
    size = spec["vision_config"]["image_size"]
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": size, "width": size}),
        tokenizer,
        num_query_tokens=spec["num_query_tokens"],
    )
    save_backbone(model, processor, folder)
    del model
    return load_backbone(BackboneConfig(folder, dtype="float16", local_files_only=True))


def time_edits(backbone: Backbone, edits: list[dict], fast: bool, steps: int) -> list[float]:
    layers = backbone.last_layers(4)
    config = IntrinsicConfig(max_steps=steps, stop_early=False)
    memory = {layer: torch.randn(256, backbone.hidden_size, device=backbone.model.device) for layer in layers}
    unrelated = UnrelatedInputs(backbone, memory, memory)
    editor = UniKEEditor(backbone, layers, config, None, None, unrelated, fast_tail=fast)
    seconds = []
    for inputs in edits:
        sync()
        start = time.perf_counter()
        editor.edit(inputs)
        sync()
        seconds.append(time.perf_counter() - start)
        editor.restore()
    return seconds


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/world-blip2")
    parser.add_argument(
        "--architecture", choices=sorted(FULL_SIZE), help="random weights of a full-size model"
    )
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        if args.architecture:
            backbone = random_full_size(args.architecture, folder, device)
        else:
            backbone = load_backbone(BackboneConfig(args.model, local_files_only=True))
    backbone.model.to(device)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    prompts = ["What colour are the objects?", "How many objects are there?", "What shape are the objects?"]
    edits = [
        {
            k: v.to(device)
            for k, v in backbone.encoder.encode([Example(prompts[i % 3], "purple", image)]).items()
        }
        for i in range(args.edits)
    ]
    time_edits(backbone, edits[:1], True, 2)  # warm-up
    results = {}
    for fast in (True, False):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        seconds = time_edits(backbone, edits, fast, args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        results[fast] = statistics.median(seconds)
        path = "tail (frozen prefix once)" if fast else "full model every step"
        print(
            f"{path:28s} median {results[fast]:.3f} s/edit over {len(seconds)} edits, {args.steps} steps; "
            f"peak GPU memory {peak:.2f} GiB"
        )
    print(
        f"speed-up of the tail path: {results[False] / results[True]:.2f}x  "
        f"(device {device}, {backbone.num_layers} layers, edited 4)"
    )


if __name__ == "__main__":
    main()
