"""Tiny checkpoints in LAVIS's own layout (key names, shapes, what each file holds), for the converter
tests: a BLIP-2 `.pth` (ln_vision, query tokens, Q-Former, projection), a bare EVA ViT file with one block
more than BLIP-2 runs, and a language model saved as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from unike_pl.backbones.factory import ModelSize, build_blip2, train_tokenizer

WIDTH, VIT_LAYERS, VIT_HEADS, PATCH, IMAGE = 32, 2, 2, 8, 32
QFORMER, QFORMER_LAYERS, QFORMER_HEADS, QUERIES, FFN = 24, 3, 2, 4, 48
PROJECTION = {False: "opt_proj", True: "llama_proj"}


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 0.2


def lavis_files(folder: Path, texts: list[str], minigpt4: bool = False) -> dict[str, Path]:
    """Write the BLIP-2 checkpoint, the EVA ViT file and the language model folder under `folder`; for
    MiniGPT-4 the BLIP-2 file is a FlanT5 one (`t5_proj`, unused), the language model a LLaMA and the
    MiniGPT-4 checkpoint holds only `llama_proj`."""
    generator = torch.Generator().manual_seed(0)
    r = lambda *shape: _random(generator, *shape)  # noqa: E731
    vit = {"cls_token": r(1, 1, WIDTH), "pos_embed": r(1, (IMAGE // PATCH) ** 2 + 1, WIDTH)}
    vit |= {"patch_embed.proj.weight": r(WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": r(WIDTH)}
    for i in range(VIT_LAYERS + 1):  # one block more: EVA ViT-g has 40, BLIP-2 runs 39
        block = f"blocks.{i}."
        vit |= {
            block + f"norm{n}.{p}": (1 + r(WIDTH) if p == "weight" else r(WIDTH))
            for n in (1, 2)
            for p in ("weight", "bias")
        }
        vit |= {
            block + "attn.qkv.weight": r(3 * WIDTH, WIDTH),
            block + "attn.q_bias": r(WIDTH),
            block + "attn.v_bias": r(WIDTH),
        }
        vit |= {block + "attn.proj.weight": r(WIDTH, WIDTH), block + "attn.proj.bias": r(WIDTH)}
        vit |= {block + "mlp.fc1.weight": r(4 * WIDTH, WIDTH), block + "mlp.fc1.bias": r(4 * WIDTH)}
        vit |= {block + "mlp.fc2.weight": r(WIDTH, 4 * WIDTH), block + "mlp.fc2.bias": r(WIDTH)}
    tokenizer = train_tokenizer(texts, 400)
    language = build_blip2(tokenizer, ModelSize(), "llama" if minigpt4 else "opt")[0].language_model
    hidden = language.config.hidden_size
    blip2 = {
        "ln_vision.weight": 1 + r(WIDTH),
        "ln_vision.bias": r(WIDTH),
        "query_tokens": r(1, QUERIES, QFORMER),
    }
    blip2 |= {
        "Qformer.bert.embeddings.LayerNorm.weight": 1 + r(QFORMER),
        "Qformer.bert.embeddings.LayerNorm.bias": r(QFORMER),
    }
    blip2 |= {"Qformer.bert.embeddings.position_ids": torch.arange(512)[None]}
    for i in range(QFORMER_LAYERS):
        layer = f"Qformer.bert.encoder.layer.{i}."
        for part in ("attention",) + (("crossattention",) if i % 2 == 0 else ()):
            source = WIDTH if part == "crossattention" else QFORMER
            for name in ("query", "key", "value"):
                width = QFORMER if name == "query" else source
                blip2 |= {
                    layer + f"{part}.self.{name}.weight": r(QFORMER, width),
                    layer + f"{part}.self.{name}.bias": r(QFORMER),
                }
            blip2 |= {
                layer + f"{part}.output.dense.weight": r(QFORMER, QFORMER),
                layer + f"{part}.output.dense.bias": r(QFORMER),
            }
            blip2 |= {
                layer + f"{part}.output.LayerNorm.weight": 1 + r(QFORMER),
                layer + f"{part}.output.LayerNorm.bias": r(QFORMER),
            }
        blip2 |= {
            layer + "intermediate_query.dense.weight": r(FFN, QFORMER),
            layer + "intermediate_query.dense.bias": r(FFN),
        }
        blip2 |= {
            layer + "output_query.dense.weight": r(QFORMER, FFN),
            layer + "output_query.dense.bias": r(QFORMER),
        }
        blip2 |= {
            layer + "output_query.LayerNorm.weight": 1 + r(QFORMER),
            layer + "output_query.LayerNorm.bias": r(QFORMER),
        }
    blip2 |= {
        "Qformer.bert.encoder.layer.1.intermediate.dense.weight": r(FFN, QFORMER)
    }  # a stage-1 text part
    projection = {
        f"{PROJECTION[minigpt4]}.weight": r(hidden, QFORMER),
        f"{PROJECTION[minigpt4]}.bias": r(hidden),
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {"blip2": folder / "blip2.pth", "vit": folder / "eva_vit_g.pth", "language": folder / "language"}
    if minigpt4:
        files["minigpt4"] = folder / "minigpt4.pth"
        torch.save({"model": projection}, files["minigpt4"])
        blip2 |= {"t5_proj.weight": r(64, QFORMER), "t5_proj.bias": r(64)}
    else:
        blip2 |= projection
    torch.save({"model": blip2}, files["blip2"])
    torch.save(vit, files["vit"])
    language.save_pretrained(files["language"])
    tokenizer.save_pretrained(files["language"])
    return files


def _attention(query, context, heads, projections):
    """Multi-head attention with the (weight, bias) of q, k and v; (batch, tokens, width)."""
    b, n, _ = query.shape
    split = lambda y: y.reshape(b, y.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = (split(F.linear(x, *wb)) for x, wb in zip((query, context, context), projections, strict=True))
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)


def reference_image_features(
    tensors: dict[str, torch.Tensor], pixels: torch.Tensor, projection: str
) -> torch.Tensor:
    """LAVIS's image → language-model inputs, computed from the raw tensors as LAVIS computes them: EVA
    ViT blocks (pre-norm, q/v biases only, exact GELU), `ln_vision` (eps 1e-5), the Q-Former (post-norm
    BERT layers, cross-attention on even layers) and the projection."""
    t = {k.removeprefix("visual_encoder."): v for k, v in tensors.items()}
    linear = lambda x, name: F.linear(x, t[name + ".weight"], t[name + ".bias"])  # noqa: E731
    x = F.conv2d(pixels, t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([t["cls_token"].expand(len(x), -1, -1), x], dim=1) + t["pos_embed"]
    for i in range(VIT_LAYERS):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), t[p + "norm1.weight"], t[p + "norm1.bias"], 1e-6)
        wq, wk, wv = t[p + "attn.qkv.weight"].split(WIDTH)
        projections = ((wq, t[p + "attn.q_bias"]), (wk, torch.zeros(WIDTH)), (wv, t[p + "attn.v_bias"]))
        x = x + linear(_attention(h, h, VIT_HEADS, projections), p + "attn.proj")
        h = F.layer_norm(x, (WIDTH,), t[p + "norm2.weight"], t[p + "norm2.bias"], 1e-6)
        x = x + linear(F.gelu(linear(h, p + "mlp.fc1")), p + "mlp.fc2")
    image = F.layer_norm(x, (WIDTH,), t["ln_vision.weight"], t["ln_vision.bias"], 1e-5)

    norm = lambda y, name: F.layer_norm(y, (QFORMER,), t[name + ".weight"], t[name + ".bias"], 1e-12)  # noqa: E731
    queries = norm(t["query_tokens"].expand(len(x), -1, -1), "Qformer.bert.embeddings.LayerNorm")
    for i in range(QFORMER_LAYERS):
        p = f"Qformer.bert.encoder.layer.{i}."
        for part in ["attention", "crossattention"] if i % 2 == 0 else ["attention"]:
            context = queries if part == "attention" else image
            projections = [
                (t[f"{p}{part}.self.{n}.weight"], t[f"{p}{part}.self.{n}.bias"])
                for n in ("query", "key", "value")
            ]
            out = linear(_attention(queries, context, QFORMER_HEADS, projections), f"{p}{part}.output.dense")
            queries = norm(out + queries, f"{p}{part}.output.LayerNorm")
        out = linear(F.gelu(linear(queries, p + "intermediate_query.dense")), p + "output_query.dense")
        queries = norm(out + queries, p + "output_query.LayerNorm")
    return linear(queries, projection)
