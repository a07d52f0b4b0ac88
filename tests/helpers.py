"""Shared test helpers: the tiny world-model size and shipped configs rewritten to temporary folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY = {
    "hidden": 32,
    "layers": 4,
    "heads": 2,
    "ffn": 64,
    "vision_hidden": 32,
    "vision_layers": 1,
    "qformer_layers": 1,
    "query_tokens": 4,
    "image_size": 32,
    "patch_size": 8,
    "max_positions": 128,
}

PATH_PREFIXES = ("data/world", "checkpoints/world-blip2", "runs/", "results/")


def relocate(value: Any, mapping: dict[str, str]) -> Any:
    """Replace the shipped default folders in every string of a parsed config."""
    if isinstance(value, dict):
        return {key: relocate(item, mapping) for key, item in value.items()}
    if isinstance(value, list):
        return [relocate(item, mapping) for item in value]
    if isinstance(value, str):
        for prefix, replacement in mapping.items():
            if value.startswith(prefix):
                return replacement + value[len(prefix) :]
    return value


def shipped_config(name: str, tmp_path: Path, world: Path, model: Path) -> dict[str, Any]:
    """configs/<name> with the world, the model and every output folder moved under tmp_path."""
    settings = yaml.safe_load(Path("configs", name).read_text())
    mapping = {
        "data/world": str(world),
        "checkpoints/world-blip2": str(model),
        "runs/": f"{tmp_path}/runs/",
        "results/": f"{tmp_path}/results/",
    }
    settings = relocate(settings, mapping)
    settings["trainer"]["accelerator"] = "cpu"
    return settings


def log_to(settings: dict[str, Any], folder: Path) -> None:
    """Point every logger of a parsed config (CSV and TensorBoard) at `folder`."""
    for logger in settings["trainer"].get("logger") or []:
        logger["init_args"]["save_dir"] = str(folder)


def write_config(settings: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def shrink(config: Path, tmp_path: Path, model: Path, data: Path) -> Path:
    """The real config pointed at a tiny model and a tiny split, writing results under tmp_path."""
    settings = yaml.safe_load(config.read_text())
    backbone = {"name_or_path": str(model), "dtype": "float32", "local_files_only": True}
    settings["model"]["init_args"]["backbone"] = backbone
    settings["data"]["init_args"].update(
        backbone=backbone,
        eval_file=str(data / "vqa_eval.json"),
        train_file=None,
        image_root=str(data / "coco"),
        rephrase_image_root=str(data / "rephrase"),
        batch_size=2,
    )
    for callback in settings["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ResultsReport"):
            callback["init_args"]["output_dir"] = str(tmp_path / "results")
    settings["trainer"].update(accelerator="cpu", default_root_dir=str(tmp_path / "runs"))
    log_to(settings, tmp_path / "runs")
    shrunk = tmp_path / config.name
    shrunk.write_text(yaml.safe_dump(settings))
    return shrunk


def ft_config(tmp_path: Path, model: Path, data: Path, **changes: Any) -> Path:
    """FT (no memory, nothing trained: the quickest editing run) on a tiny model and split, one edit per
    batch, with an edits folder and a pre-edit cache under tmp_path; `changes` set dotted keys."""
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, model, data)
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["inference_mode"] = False
    settings["model"] = {
        "class_path": "unike_pl.modules.FineTuneModule",
        "init_args": {
            "backbone": settings["model"]["init_args"]["backbone"],
            "finetune": {"max_steps": 2},
            "scoring": {"generation": False, "pre_edit_cache": str(tmp_path / "pre_edit")},
            "edits_dir": str(tmp_path / "edits"),
        },
    }
    settings["data"]["init_args"]["batch_size"] = 1
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = settings
        for part in parents:
            node = node[part]
        node[last] = value
    config.write_text(yaml.safe_dump(settings))
    return config
