"""SERAC: routing between the counterfactual and the base model, the edit memory, and fit / validate
through the shipped config on a tiny world model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import shipped_config, write_config
from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.cli import main
from unike_pl.editing.context import ContextView
from unike_pl.editing.routing import rows_of
from unike_pl.editing.serac import (
    EditFact,
    ScopeClassifier,
    ScopeConfig,
    SERACEditor,
    trainable_copy,
)
from unike_pl.metrics import names, read_results
from unike_pl.modules.serac import SERACModule

RED = Image.new("RGB", (40, 40), (220, 30, 30))
GREY = Image.new("RGB", (40, 40), (90, 90, 90))
EDIT_A = Example("what color is the circle?", "purple", RED)
EDIT_B = Example("how many squares are there?", "two", GREY)
UNRELATED = Example("what shape is shown?", "a triangle", GREY)


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


@pytest.fixture()
def editor(backbone) -> SERACEditor:
    """An untrained classifier made strict (in scope only at cosine ≈ 1: the edit input itself) and a
    counterfactual copy perturbed so that its answers differ from the base model's."""
    torch.manual_seed(0)
    scope = ScopeConfig(initial_scale=1000.0, initial_bias=-999.9)
    classifier = ScopeClassifier(2 * backbone.hidden_size, scope).eval()
    counterfactual = trainable_copy(backbone)
    with torch.no_grad():
        for parameter in counterfactual.language_model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return SERACEditor(backbone, classifier, counterfactual, scope)


def encode(backbone, examples):
    return backbone.encoder.encode(examples, keep_examples=True)


def test_in_scope_inputs_are_answered_by_the_counterfactual_and_others_by_the_base(editor, backbone):
    editor.edit(encode(backbone, [EDIT_A]))
    batch = encode(backbone, [UNRELATED, EDIT_A])
    _, chosen = editor.router.route(batch)
    assert chosen == [None, 0]
    with editor.answering() as model, torch.no_grad():
        merged = model(batch)
        answers = model.generate_answers(batch, max_new_tokens=3)
        base = backbone(batch)
        view = ContextView(editor.counterfactual, EditFact(EDIT_A))
        counterfactual = view(rows_of(batch, [1]))[0]
    length = int(batch["attention_mask"][1].sum())
    assert torch.equal(merged[0], base[0])
    assert torch.allclose(merged[1, :length], counterfactual[:length])
    assert not torch.allclose(merged[1, :length], base[1, :length], atol=1e-3)
    single = encode(backbone, [UNRELATED])
    assert answers[0] == backbone.generate_answers(single, 3)[0]
    assert answers[1] == view.generate_answers(rows_of(batch, [1]), 3)[0]


def test_restore_empties_the_memory_and_leaves_the_base_model_exact(editor, backbone):
    weights = {k: v.clone() for k, v in backbone.state_dict().items()}
    batch = encode(backbone, [EDIT_A, UNRELATED])
    with torch.no_grad():
        before = backbone(batch)
    editor.edit(encode(backbone, [EDIT_A]))
    with editor.answering() as model, torch.no_grad():
        assert not torch.equal(model(batch), before)
    editor.restore()
    assert editor.edits == [] and editor.router.keys == []
    with editor.answering() as model, torch.no_grad():
        assert torch.equal(model(batch), before)
    assert all(torch.equal(v, weights[k]) for k, v in backbone.state_dict().items())


def test_sequential_edits_are_all_stored_and_each_input_uses_its_own(editor, backbone):
    editor.edit(encode(backbone, [EDIT_A]))
    editor.edit(encode(backbone, [EDIT_B]))
    assert len(editor.edits) == 2
    _, chosen = editor.router.route(encode(backbone, [EDIT_B, UNRELATED, EDIT_A]))
    assert chosen == [1, None, 0]


def test_routed_answers_equal_each_samples_own_path_exactly(editor, backbone):
    """With two edits stored, each in-scope row is its edit's counterfactual view on that row alone and the
    out-of-scope row is the base model's, to the bit; the greedy answers likewise."""
    editor.edit(encode(backbone, [EDIT_A]))
    editor.edit(encode(backbone, [EDIT_B]))
    batch = encode(backbone, [EDIT_B, UNRELATED, EDIT_A])
    with editor.answering() as model, torch.no_grad():
        merged = model(batch)
        answers = model.generate_answers(batch, max_new_tokens=3)
        base = backbone(batch)
        expected = [base[1]]
        expected_answers = [backbone.generate_answers(encode(backbone, [UNRELATED]), 3)[0]]
        for row, edit in ((0, EDIT_B), (2, EDIT_A)):
            view = ContextView(editor.counterfactual, EditFact(edit))
            expected.insert(row, view(rows_of(batch, [row]))[0])
            expected_answers.insert(row, view.generate_answers(rows_of(batch, [row]), 3)[0])
    assert all(torch.equal(row, direct) for row, direct in zip(merged, expected, strict=True))
    assert not torch.allclose(merged[0], base[0], atol=1e-3)  # the counterfactual model did answer
    assert answers == expected_answers


def test_editing_with_untrained_parts_is_refused(world_model):
    module = SERACModule(BackboneConfig(str(world_model), local_files_only=True))
    module.configure_model()
    with pytest.raises(ValueError, match="--ckpt_path"):
        module.build_editor()


def serac_config(root: Path, world: Path, model: Path, epochs: int) -> Path:
    settings = shipped_config("serac_vqa.yaml", root, world, model)
    settings["trainer"].update(max_epochs=epochs, log_every_n_steps=1)
    settings["trainer"]["callbacks"] = [
        c for c in settings["trainer"]["callbacks"] if not c["class_path"].endswith("RichProgressBar")
    ]
    settings["model"]["init_args"]["scoring"]["max_new_tokens"] = 2
    settings["data"]["init_args"].update(limit=4, train_batch_size=2)
    return write_config(settings, root / "serac.yaml")


def test_fit_saves_trained_parts_resumes_and_edits(tmp_path, small_world, world_model):
    config = serac_config(tmp_path, small_world, world_model, epochs=1)
    main(["fit", "--config", str(config)])
    checkpoints = tmp_path / "runs" / "serac" / "checkpoints"
    assert (checkpoints / "serac.ckpt").is_file()
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    state = last["state_dict"]
    assert bool(state["trained"]) and last["global_step"] == 2
    assert any(k.startswith("scope_classifier.") for k in state)
    assert any(k.startswith("counterfactual_model.model.language_model.") for k in state)
    # Only trained weights: no backbone, no frozen vision copy, no second name for the language model.
    assert not any(k.startswith(("backbone.", "counterfactual_model.language_model.")) for k in state)
    assert not any("vision" in k for k in state)
    logged = next((tmp_path / "runs" / "serac" / "logs").rglob("metrics.csv")).read_text()
    assert "val/scope_accuracy" in logged and "train/counterfactual_loss" in logged

    config = serac_config(tmp_path, small_world, world_model, epochs=2)
    main(["fit", "--config", str(config), "--ckpt_path", str(checkpoints / "last.ckpt")])
    resumed = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4

    main(["validate", "--config", str(config), "--ckpt_path", str(checkpoints / "serac.ckpt")])
    result = read_results(tmp_path / "results" / "edit" / "serac_vqa_val.json")
    scores = result["scores"]
    assert all(0 <= scores[names.stage_key("val", m)] <= 100 for m in names.EDIT_METRICS)
    assert result["settings"]["method"] == "SERACModule" and result["settings"]["run_key"]["parts"]["weights"]
    assert len(list((tmp_path / "runs" / "serac_vqa" / "edits").glob("records_*.json"))) == 4


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_the_shipped_config_parses(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", "configs/serac_vqa.yaml", "--print_config"])
    assert exit_info.value.code == 0
