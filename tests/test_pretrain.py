"""The embedded default: pretraining through `fit`, resume, export, and pre-edit validate on the world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY, log_to
from unike_pl.backbones import BackboneConfig, load_backbone
from unike_pl.cli import main
from unike_pl.metrics import read_results


def pretrain_config(tmp_path: Path, world: Path, epochs: int, max_positions: int = 256) -> Path:
    """configs/pretrain_world.yaml shrunk to a tiny model, a few batches and folders under tmp_path (with
    the shipped config's 256 positions: context-reading examples are long)."""
    settings = yaml.safe_load(Path("configs/pretrain_world.yaml").read_text())
    init = str(tmp_path / "init")
    size = TINY | {"max_positions": max_positions}
    settings["model"]["init_args"].update(world_root=str(world), model_dir=init, size=size, vocab_size=400)
    settings["data"]["init_args"].update(
        world_root=str(world), backbone={"name_or_path": init, "local_files_only": True}, batch_size=8
    )
    settings["trainer"].update(
        max_epochs=epochs, limit_train_batches=3, limit_val_batches=2, default_root_dir=str(tmp_path / "run")
    )
    log_to(settings, tmp_path / "run")
    for callback in settings["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "ckpt")
        if callback["class_path"].endswith("ExportPretrained"):
            callback["init_args"]["output_dir"] = str(tmp_path / "model")
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_fit_exports_a_model_the_loader_opens(tmp_path, small_world):
    main(["fit", "--config", str(pretrain_config(tmp_path, small_world, epochs=1))])
    exported = load_backbone(BackboneConfig(str(tmp_path / "model"), local_files_only=True))
    initial = load_backbone(BackboneConfig(str(tmp_path / "init"), local_files_only=True))
    assert next(exported.parameters()).dtype == torch.float32  # stored as float16, loaded as asked
    changed = [
        name
        for name, p in exported.model.named_parameters()
        if not torch.allclose(p, initial.model.get_parameter(name), atol=1e-3)
    ]
    assert changed, "training moved the weights"
    assert exported.encoder.prompt_format.name == "blip2"
    assert not list(tmp_path.glob(".model.*")), "no staging folder is left behind"
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3


def test_fit_resumes_from_the_last_checkpoint(tmp_path, small_world):
    main(["fit", "--config", str(pretrain_config(tmp_path, small_world, epochs=1))])
    config = pretrain_config(tmp_path, small_world, epochs=2)
    main(["fit", "--config", str(config), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6  # 3 steps restored, 3 more trained
    logged = (tmp_path / "run" / "logs").rglob("metrics.csv")
    assert any("val/loss" in path.read_text() for path in logged)


def test_pre_edit_validate_on_the_world(tmp_path, small_world):
    main(["fit", "--config", str(pretrain_config(tmp_path, small_world, epochs=1))])
    settings = yaml.safe_load(Path("configs/pre_edit_vqa.yaml").read_text())
    backbone = {"name_or_path": str(tmp_path / "model"), "dtype": "float32", "local_files_only": True}
    settings["model"]["init_args"]["backbone"] = backbone
    settings["data"]["init_args"]["root"] = str(small_world)
    settings["trainer"].update(accelerator="cpu", default_root_dir=str(tmp_path / "runs"))
    log_to(settings, tmp_path / "runs")
    (report,) = [c for c in settings["trainer"]["callbacks"] if c["class_path"].endswith("ResultsReport")]
    report["init_args"]["output_dir"] = str(tmp_path / "results")
    config = tmp_path / "pre_edit.yaml"
    config.write_text(yaml.safe_dump(settings))
    main(["validate", "--config", str(config)])
    scores = read_results(tmp_path / "results" / "pre_edit_vqa_val.json")["scores"]
    assert set(scores) >= {"val/reliability", "val/t_locality_answer_acc", "val/m_locality_answer_acc"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())


def test_validate_never_invents_a_missing_model(tmp_path, small_world):
    config = pretrain_config(tmp_path, small_world, epochs=1)
    with pytest.raises(FileNotFoundError, match="does not exist; train it with `fit`"):
        main(["validate", "--config", str(config)])
    assert not (tmp_path / "init").exists()


def test_an_example_longer_than_the_positions_is_named(tmp_path, small_world):
    config = pretrain_config(tmp_path, small_world, epochs=1, max_positions=40)
    with pytest.raises(ValueError, match="positions: raise size.max_positions"):
        main(["fit", "--config", str(config)])


def test_length_grouped_order_is_a_deterministic_permutation_of_similar_length_batches() -> None:
    from unike_pl.pretrain.data import LengthGroupedOrder

    lengths = [int(n) for n in torch.randint(5, 200, (1000,), generator=torch.Generator().manual_seed(1))]
    order = LengthGroupedOrder(lengths, batch_size=16, pool_batches=8)
    first = list(order)
    assert sorted(first) == list(range(1000)) and list(order) == first
    order.set_epoch(1)
    assert list(order) != first
    batches = [first[i : i + 16] for i in range(0, 1000 - 16 + 1, 16)]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    plain = [max(lengths[i : i + 16]) - min(lengths[i : i + 16]) for i in range(0, 1000 - 16 + 1, 16)]
    # Padding waste: grouped batches span a small part of the range that random batches span.
    assert sum(spread) < 0.25 * sum(plain)
