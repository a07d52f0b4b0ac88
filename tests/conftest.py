"""Shared fixtures: tiny MLLMs built from configs and saved like hub snapshots, and a tiny MMEdit split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import TINY
from unike_pl.backbones.factory import (
    QWEN2VL_TOKENS,
    ModelSize,
    build_blip2,
    build_llava,
    build_qwen2vl,
    save_backbone,
    train_tokenizer,
)
from unike_pl.pretrain.init_model import init_world_model
from unike_pl.world import generate_world

CORPUS = [
    "what color is the circle? red",
    "what colour are the objects? blue",
    "how many squares are there? two",
    "what shape is shown? a triangle",
    "a photo of three small green stars on the left",
    "nq question: what is the capital of zorland? mirth",
    "nq question: who founded velmora? ansel",
    "Question: what color is it? Short answer: purple",
    "###Human: <Img></Img> ###Assistant:",
    "USER: ASSISTANT:",
    "user assistant",
]
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "purple": (140, 40, 200)}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(CORPUS * 5, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory, tiny_tokenizer) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """BLIP-2 OPT, BLIP-2 LLaMA (MiniGPT-4 style), LLaVA-1.5 style and Qwen2-VL models, saved with
    save_pretrained, with the state dicts they had before saving."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    builders = {
        "blip2": lambda: build_blip2(tiny_tokenizer, ModelSize(), "opt"),
        "minigpt4": lambda: build_blip2(tiny_tokenizer, ModelSize(), "llama"),
        "llava": lambda: build_llava(tiny_tokenizer, ModelSize()),
        "qwen2vl": lambda: build_qwen2vl(train_tokenizer(CORPUS * 5, 400, QWEN2VL_TOKENS), ModelSize()),
    }
    builds = {}
    for name, build in builders.items():
        model, processor = build()
        builds[name] = (
            save_backbone(model, processor, root / name),
            {k: v.clone() for k, v in model.state_dict().items()},
        )
    return builds


@pytest.fixture(scope="session")
def tiny_models(tiny_builds) -> dict[str, Path]:
    return {name: path for name, (path, _) in tiny_builds.items()}


def mmedit_record(i: int, color: str) -> dict[str, str]:
    return {
        "src": "what color is the circle?",
        "pred": "red",
        "alt": color,
        "rephrase": "what colour are the objects?",
        "image": f"val2014/img_{i}.png",
        "image_rephrase": f"img_{i}_r.png",
        "loc": f"nq question: what is the capital of zorland {i}?",
        "loc_ans": "mirth",
        "m_loc": f"val2014/loc_{i}.png",
        "m_loc_q": "how many squares are there?",
        "m_loc_a": "two",
    }


@pytest.fixture()
def mmedit_dir(tmp_path) -> Path:
    """An E-VQA-format split of four records with its images, in MMEdit's folder layout."""
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    (tmp_path / "rephrase").mkdir()
    records = []
    for i, color in enumerate(COLORS):
        rgb = COLORS[color]
        Image.new("RGB", (40, 40), rgb).save(tmp_path / "coco" / "val2014" / f"img_{i}.png")
        Image.new("RGB", (48, 48), tuple(c // 2 for c in rgb)).save(tmp_path / "rephrase" / f"img_{i}_r.png")
        Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "coco" / "val2014" / f"loc_{i}.png")
        records.append(mmedit_record(i, color))
    (tmp_path / "vqa_eval.json").write_text(json.dumps(records))
    return tmp_path


@pytest.fixture(scope="module")
def world_model(tmp_path_factory, small_world) -> Path:
    """An untrained tiny model of the small world: wrong on nearly everything, so the memory has triplets."""
    return init_world_model(
        small_world, tmp_path_factory.mktemp("model") / "model", ModelSize(**TINY), 400, 0
    )


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "world"
    generate_world(root, seed=0, scale="small")
    return root
