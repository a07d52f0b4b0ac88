"""The command line: subcommands, every shipped config, and a validate run on a shrunk real config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import shrink
from unike_pl.backbones import BackboneConfig, load_backbone
from unike_pl.backbones.prompts import VQA_TEMPLATE
from unike_pl.cli import main
from unike_pl.data import MMEditDataset, read_mmedit
from unike_pl.data.cases import EditCollator
from unike_pl.metrics import names, read_results, token_accuracy

CONFIGS = sorted(
    c for c in (Path(__file__).parents[1] / "configs").glob("*.yaml") if not c.stem.startswith("compare")
)
"""LightningCLI configs; configs/compare*.yaml are the comparison command's (tests/test_compare.py)."""


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert f"    {subcommand} " in out


def test_configs_exist():
    assert CONFIGS, "configs/ ships at least one run"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys):
    subcommand = "fit" if config.stem.startswith(("pretrain", "disentangle")) else "validate"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("unike_pl.")


def expected_reliability(model: Path, data: Path) -> float:
    """Token accuracy of the unedited model on the edit cases, computed without the CLI."""
    backbone = load_backbone(BackboneConfig(str(model), local_files_only=True))
    dataset = MMEditDataset(
        read_mmedit(data / "vqa_eval.json", "vqa", data / "coco", data / "rephrase"), False
    )
    batch = EditCollator(backbone.encoder)([dataset[i] for i in range(len(dataset))])
    encoded = batch.cases[names.EDIT]
    with torch.no_grad():
        return float(token_accuracy(backbone(encoded), encoded["labels"]).mean() * 100)


def test_validate_writes_and_prints_scores(tmp_path, tiny_models, mmedit_dir, capsys):
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    main(["validate", "--config", str(config)])
    out = capsys.readouterr().out
    assert "T-Loc answers" in out and "pre_edit_vqa_val" in out
    results = read_results(tmp_path / "results" / "pre_edit_vqa_val.json")
    scores, settings = results["scores"], results["settings"]
    expected = {
        names.stage_key("val", m)
        for m in names.TARGET_METRICS + names.ANSWER_METRICS + names.GENERATION_METRICS
    }
    assert set(scores) == expected
    assert scores["val/reliability"] == pytest.approx(
        expected_reliability(tiny_models["blip2"], mmedit_dir), abs=1e-4
    )
    assert settings["target_scorer"] == "token_accuracy" and settings["prompt_template"] == "none"
    assert settings["backbone"] == str(tiny_models["blip2"]) and settings["method"] == "PreEditEvaluation"
    assert (tmp_path / "results" / "pre_edit_vqa_val.csv").read_text().startswith("metric,value\n")


def test_results_say_what_was_scored(tmp_path, tiny_models, mmedit_dir):
    """A run on part of a split says so: the limit, the records served and skipped, the image roots, and
    the cases whose questions were wrapped (captions wrap only the VQA questions among their cases)."""
    records = json.loads((mmedit_dir / "vqa_eval.json").read_text())
    records[3]["alt"] = ""  # skipped when read, as the benchmark's loaders skip it
    (mmedit_dir / "vqa_eval.json").write_text(json.dumps(records))
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    main(
        [
            "validate",
            "--config",
            str(config),
            "--data.init_args.limit",
            "2",
            "--data.init_args.task",
            "caption",
            "--data.init_args.use_template",
            "true",
        ]
    )
    results = read_results(tmp_path / "results" / "pre_edit_vqa_val.json")
    settings = results["settings"]
    assert results["records"] == 2 and settings["limit"] == 2 and settings["eval_records"] == 2
    assert settings["skipped_records"] == 1
    assert settings["image_root"] == str(mmedit_dir / "coco")
    assert settings["rephrase_image_root"] == str(mmedit_dir / "rephrase")
    assert settings["prompt_template"] == VQA_TEMPLATE  # it used to say "none" for captions
    assert settings["templated_cases"] == [names.MULTIMODAL_LOCALITY, names.RELATED, names.HARD_NEIGHBOURS]


def test_validate_names_a_missing_split(tmp_path, tiny_models, mmedit_dir):
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    (mmedit_dir / "vqa_eval.json").unlink()
    with pytest.raises(FileNotFoundError, match="vqa_eval.json does not exist"):
        main(["validate", "--config", str(config)])


def test_editing_configs_read_the_memory_that_disentangle_builds():
    """The memory cache is keyed by its settings: a config whose memory differs would not find it (how
    editing searches it, `index`, is no part of the memory)."""

    def memory(name: str, *keys: str) -> dict:
        settings = yaml.safe_load(Path("configs", name).read_text())
        for key in keys:
            settings = settings[key]
        return {key: value for key, value in settings["memory"].items() if key != "index"}

    pairs = {
        "disentangle.yaml": ("edit_vqa.yaml", "edit_caption.yaml"),
        "disentangle_smollm2.yaml": ("edit_vqa_smollm2.yaml",),
    }
    for source, editors in pairs.items():
        built = memory(source, "data", "init_args")
        for name in editors:
            assert memory(name, "model", "init_args") == built, name


@pytest.mark.parametrize("config", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_a_config_names_its_backbone_and_its_dataset_once(config):
    """One `--model.init_args.backbone.name_or_path` (or data's, for the memory fit) switches the model,
    one `--data.init_args.root` the dataset: no other setting names the world's folder."""
    text = "\n".join(line.split("#")[0] for line in config.read_text().splitlines())
    assert text.count("name_or_path:") <= 1
    settings = yaml.safe_load(text)
    data = settings.get("data", {}).get("init_args", {})
    if "world_root" in data or "data" not in settings:
        return  # the pretraining data modules read the world itself; compare configs compose the others
    paths = [line.strip() for line in text.splitlines() if "data/world" in line]
    assert paths == [f"root: {data['root']}"]
