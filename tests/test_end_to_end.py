"""Every backbone of the README's table (and a converted LAVIS checkpoint), end to end on a tiny random
model: the unedited reference, the disentangle fit (memory mined, encoders trained) and UniKE's edits,
through the command line's configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CORPUS
from tests.helpers import shipped_config, write_config
from tests.lavis_tensors import lavis_files
from unike_pl import convert_lavis
from unike_pl.cli import main
from unike_pl.metrics import names, read_results

BACKBONES = ("blip2", "minigpt4", "llava", "qwen2vl", "lavis-blip2")


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny models, and a tiny LAVIS BLIP-2 checkpoint converted by `python -m unike_pl.convert_lavis`."""
    folder = tmp_path_factory.mktemp("lavis")
    files = lavis_files(folder, CORPUS * 5)
    converted = folder / "converted"
    convert_lavis.main(
        [
            "--checkpoint",
            str(files["blip2"]),
            "--checkpoint",
            str(files["vit"]),
            "--language-model",
            str(files["language"]),
            "--out",
            str(converted),
            "--vit-layers",
            "2",
            "--vit-heads",
            "2",
            "--qformer-heads",
            "2",
            "--local-files-only",
        ]
    )
    return {**tiny_models, "lavis-blip2": converted}


def world_layout(mmedit_dir: Path, root: Path) -> Path:
    """The tiny split laid out as the embedded world is (the shipped configs' paths): it serves as the
    training split the memory is mined from and as the eval split."""
    for task in ("vqa", "caption"):
        (root / task).mkdir(parents=True)
    records = json.loads((mmedit_dir / "vqa_eval.json").read_text())
    for file in ("vqa/vqa_train.json", "vqa/vqa_eval.json", "caption/caption_train_edit.json"):
        (root / file).write_text(json.dumps(records))
    shutil.copytree(mmedit_dir / "coco", root / "images")
    shutil.copytree(mmedit_dir / "rephrase", root / "images_rephrase")
    return root


@pytest.mark.parametrize("name", BACKBONES)
def test_pre_edit_fit_and_editing_run_on_every_backbone(name, tmp_path, models, mmedit_dir):
    world, model = world_layout(mmedit_dir, tmp_path / "world"), models[name]

    reference = shipped_config("pre_edit_vqa.yaml", tmp_path, world, model)
    reference["model"]["init_args"]["scoring"]["max_new_tokens"] = 2
    main(["validate", "--config", str(write_config(reference, tmp_path / "pre_edit.yaml"))])
    unedited = read_results(tmp_path / "results" / "pre_edit" / "pre_edit_vqa_val.json")["scores"]
    assert names.stage_key("val", names.RELIABILITY) in unedited

    disentangle = shipped_config("disentangle.yaml", tmp_path, world, model)
    disentangle["data"]["init_args"].update(batch_size=4, val_fraction=0.25)
    disentangle["data"]["init_args"]["memory"]["max_new_tokens"] = 2
    disentangle["trainer"]["max_epochs"] = 1
    main(["fit", "--config", str(write_config(disentangle, tmp_path / "disentangle.yaml"))])
    encoders = tmp_path / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt"
    assert encoders.is_file()

    edit = shipped_config("edit_vqa.yaml", tmp_path, world, model)
    init = edit["model"]["init_args"]
    init["memory"]["max_new_tokens"] = 2
    init["intrinsic"]["max_steps"] = 2
    init["latent"]["top_k"] = 4
    init.update(memory_sample=8)
    init["scoring"]["max_new_tokens"] = 2
    edit["data"]["init_args"]["limit"] = 2
    main(
        [
            "validate",
            "--config",
            str(write_config(edit, tmp_path / "edit.yaml")),
            "--ckpt_path",
            str(encoders),
        ]
    )
    result = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")
    assert result["records"] == 2
    for metric in names.TARGET_METRICS + names.LOCALITY_METRICS:
        assert 0 <= result["scores"][names.stage_key("val", metric)] <= 100
    edits = [
        json.loads(f.read_text()) for f in (tmp_path / "runs" / "edit_vqa" / "edits").glob("records_*.json")
    ]
    assert len(edits) == 2 and all(report["finite"] for e in edits for report in e["edits"])
