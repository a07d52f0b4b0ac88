"""`python -m unike_pl.convert_lavis`: a LAVIS BLIP-2 or MiniGPT-4 checkpoint as a model folder.

BLIP-2 OPT (LAVIS `pretrain_opt2.7b`):
    python -m unike_pl.convert_lavis --checkpoint blip2_pretrained_opt2.7b.pth --checkpoint eva_vit_g.pth \\
        --language-model facebook/opt-2.7b --out checkpoints/blip2-opt-2.7b --dtype float16
MiniGPT-4 (its checkpoint holds only llama_proj; the ViT and Q-Former come from LAVIS's files):
    python -m unike_pl.convert_lavis --checkpoint prerained_minigpt4_7b.pth \\
        --checkpoint blip2_pretrained_flant5xxl.pth --checkpoint eva_vit_g.pth \\
        --language-model /models/vicuna-7b --projection llama_proj --out checkpoints/minigpt4-7b \\
        --dtype float16
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from unike_pl.backbones.lavis import PROJECTIONS, LavisSources, convert_lavis
from unike_pl.backbones.loader import DTYPES
from unike_pl.errors import exit_on_user_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unike_pl.convert_lavis",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", action="append", required=True, help="a LAVIS .pth (repeat for each)")
    parser.add_argument("--language-model", required=True, help="Hugging Face folder or hub id")
    parser.add_argument("--projection", default="opt_proj", choices=PROJECTIONS)
    parser.add_argument("--out", required=True, help="the model folder to write (replaced whole)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    defaults = LavisSources([], "")
    parser.add_argument("--vit-layers", type=int, default=defaults.vit_layers)
    parser.add_argument("--vit-heads", type=int, default=defaults.vit_heads)
    parser.add_argument("--qformer-heads", type=int, default=defaults.qformer_heads)
    parser.add_argument("--local-files-only", action="store_true")
    args = parser.parse_args(argv)
    sources = LavisSources(
        args.checkpoint,
        args.language_model,
        args.projection,
        args.vit_layers,
        args.vit_heads,
        args.qformer_heads,
        args.local_files_only,
    )
    print(f"wrote {convert_lavis(sources, args.out, args.dtype)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main)())
