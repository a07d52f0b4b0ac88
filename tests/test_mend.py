"""MEND: the update's shape and identity initialisation, exact restore, sequential accumulation, the
refusal to edit untrained, and `fit` → checkpoint → resume → `validate` on a tiny world model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from tests.helpers import shipped_config, write_config
from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.cli import main
from unike_pl.editing.mend import (
    FactorUpdate,
    MENDConfig,
    MENDEditor,
    MENDHyperNetwork,
    edited_linears,
    gradient_factors,
    updates_applied,
)
from unike_pl.losses import answer_loss_per_sample
from unike_pl.metrics import names, read_results

MODELS = ("blip2", "minigpt4")  # OPT (flattened FFN inputs) and gated LLaMA
RED = Image.new("RGB", (40, 40), (220, 30, 30))
GREY = Image.new("RGB", (40, 40), (90, 90, 90))
CONFIG = MENDConfig(layers=2, rank=8, edit_lr=0.05, append_eos=False)


@pytest.fixture(scope="module")
def backbones(tiny_models):
    return {
        name: load_backbone(BackboneConfig(str(tiny_models[name]), local_files_only=True)) for name in MODELS
    }


def edit_inputs(backbone, target="purple"):
    return backbone.encoder.encode([Example("what color is the circle?", target, RED)])


def probe_inputs(backbone):
    return backbone.encoder.encode(
        [
            Example("how many squares are there?", "two", GREY),
            Example("what shape is shown?", "a triangle", RED),
        ]
    )


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def trained_editor(backbone, seed=0) -> MENDEditor:
    """An editor whose hypernetwork has random (non-identity) blocks, marked trained."""
    torch.manual_seed(seed)
    linears = edited_linears(backbone, backbone.last_layers(CONFIG.layers))
    network = MENDHyperNetwork.for_linears(linears, CONFIG)
    for block in network.modules():
        if isinstance(block, nn.Linear):
            nn.init.normal_(block.weight, std=0.05)
    network.trained.fill_(True)
    return MENDEditor(backbone, network, CONFIG)


@pytest.mark.parametrize("name", MODELS)
def test_an_untrained_network_steps_along_the_gradient_and_hooks_match_the_weight(name, backbones):
    """Identity initialisation: ΔW = −lr·∂L/∂W exactly, one (out, in) update per linear, and adding it by
    hook gives the logits of the model whose weight was changed by ΔW."""
    backbone = backbones[name]
    inputs = edit_inputs(backbone)
    linears = edited_linears(backbone, backbone.last_layers(CONFIG.layers))
    assert len(linears) == CONFIG.layers * (3 if name == "minigpt4" else 2)
    network = MENDHyperNetwork.for_linears(linears, CONFIG).eval()
    factors = gradient_factors(linears, lambda: backbone(inputs), inputs["labels"], inputs["attention_mask"])
    with torch.no_grad():
        updates = network(factors)
    weights = [lin.module.weight for lin in linears]
    for weight in weights:
        weight.requires_grad_(True)
    try:
        answer_loss_per_sample(backbone(inputs), inputs["labels"]).sum().backward()
        probe = probe_inputs(backbone)
        with updates_applied(linears, updates), torch.no_grad():
            hooked = backbone(probe)
        for lin in linears:
            delta = updates[lin.name].weight_delta()[0]
            assert delta.shape == lin.module.weight.shape == (lin.out_features, lin.in_features)
            assert delta.abs().sum() > 0
            assert torch.allclose(delta, -CONFIG.edit_lr * lin.module.weight.grad, atol=1e-6, rtol=1e-4)
        with torch.no_grad():
            originals = [w.detach().clone() for w in weights]
            for lin in linears:
                lin.module.weight += updates[lin.name].weight_delta()[0]
            edited = backbone(probe)
            for weight, original in zip(weights, originals, strict=True):
                weight.copy_(original)
    finally:
        for weight in weights:
            weight.requires_grad_(False)
            weight.grad = None
    assert torch.allclose(hooked, edited, atol=1e-5)


def test_a_zero_edit_learning_rate_changes_nothing(backbones):
    backbone = backbones["blip2"]
    editor = trained_editor(backbone)
    editor.hypernetwork.edit_lrs.data.zero_()
    probe = probe_inputs(backbone)
    before = backbone(probe)
    editor.edit(edit_inputs(backbone))
    with editor.answering() as model:
        after = model(probe)
    assert torch.equal(after, before) and torch.isfinite(after).all()


def test_each_row_of_a_batched_update_edits_its_own_sample(backbones):
    """Training edits every record of a batch with its own update: row r only changes sample r."""
    backbone = backbones["blip2"]
    editor = trained_editor(backbone)
    batch = backbone.encoder.encode(
        [Example("what color is the circle?", "purple", RED), Example("what shape is shown?", "two", GREY)]
    )
    factors = gradient_factors(
        editor.linears, lambda: backbone(batch), batch["labels"], batch["attention_mask"]
    )
    with torch.no_grad():
        updates = editor.hypernetwork(factors)
        with updates_applied(editor.linears, updates):
            together = backbone(batch)
        for row in range(2):
            alone = {
                name: FactorUpdate(update.keys[row : row + 1], update.values[row : row + 1])
                for name, update in updates.items()
            }
            with updates_applied(editor.linears, alone):
                assert torch.allclose(backbone(batch)[row], together[row], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_restore_gives_back_the_model_bit_for_bit(name, backbones):
    backbone = backbones[name]
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    hooks = hook_count(backbone.model)
    probe = probe_inputs(backbone)
    before = backbone(probe)
    editor = trained_editor(backbone)
    report = editor.edit(edit_inputs(backbone))
    assert report.steps == 1 and report.seconds > 0
    with editor.answering() as model:
        assert not torch.allclose(model(probe), before)
    assert hook_count(backbone.model) == hooks  # hooks live only inside `answering`
    editor.restore()
    with editor.answering() as model:
        assert torch.equal(model(probe), before)
    after = backbone.model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert torch.equal(backbone(probe), before) and hook_count(backbone.model) == hooks


def test_sequential_edits_accumulate(backbones):
    backbone = backbones["blip2"]
    editor = trained_editor(backbone)
    editor.edit(edit_inputs(backbone, "purple"))
    first = {name: update.weight_delta() for name, update in editor.updates.items()}
    tokens = {name: update.keys.shape[1] for name, update in editor.updates.items()}
    editor.edit(edit_inputs(backbone, "two"))
    single = trained_editor(backbone)
    single.edit(edit_inputs(backbone, "two"))
    for name, update in editor.updates.items():
        assert update.keys.shape[1] == 2 * tokens[name]  # both edits' factors are kept
        second = update.weight_delta() - first[name]
        assert second.abs().sum() > 0
        # The second edit's gradient is taken on the model that already holds the first edit.
        assert not torch.allclose(second, single.updates[name].weight_delta(), atol=1e-7)
    editor.restore()
    assert editor.updates == {}


def test_an_untrained_network_refuses_to_edit(backbones):
    backbone = backbones["blip2"]
    linears = edited_linears(backbone, backbone.last_layers(CONFIG.layers))
    with pytest.raises(ValueError, match="untrained"):
        MENDEditor(backbone, MENDHyperNetwork.for_linears(linears, CONFIG), CONFIG)


def test_the_shipped_config_parses_for_fit_and_validate(capsys):
    for subcommand in ("fit", "validate"):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", "configs/mend_vqa.yaml", "--print_config"])
        assert exit_info.value.code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] == "unike_pl.modules.mend.MENDModule"
        assert printed["model"]["init_args"]["mend"]["layers"] == 3


# --------------------------------------------------------------------------------------------------------
# fit → checkpoint → resume → validate, through the CLI on the shipped config
# --------------------------------------------------------------------------------------------------------


def mend_config(root: Path, world: Path, model: Path, epochs: int = 1, batch_size: int = 2) -> Path:
    settings = shipped_config("mend_vqa.yaml", root, world, model)
    settings["trainer"]["max_epochs"] = epochs
    settings["trainer"]["callbacks"] = [
        c for c in settings["trainer"]["callbacks"] if not c["class_path"].endswith("RichProgressBar")
    ]
    settings["trainer"].update(enable_progress_bar=False, log_every_n_steps=1)
    init = settings["model"]["init_args"]
    init["mend"].update(layers=2, rank=8)
    init["fit_val_edits"] = 2
    init["scoring"]["max_new_tokens"] = 2
    settings["data"]["init_args"].update(limit=4, batch_size=batch_size)
    return write_config(settings, root / "mend.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_world, world_model) -> Path:
    root = tmp_path_factory.mktemp("mend")
    main(["fit", "--config", str(mend_config(root, small_world, world_model))])
    return root


def test_fit_saves_the_hypernetwork_only_and_resumes(trained, small_world, world_model):
    checkpoints = trained / "runs" / "mend" / "checkpoints"
    stored = torch.load(checkpoints / "mend.ckpt", weights_only=False)
    weights = stored["state_dict"]
    assert weights and all(key.startswith("hypernetwork.") for key in weights)
    assert bool(weights["hypernetwork.trained"])
    logged = next((trained / "runs" / "mend" / "logs").rglob("metrics.csv")).read_text()
    assert "train/loss" in logged and names.stage_key("val", names.RELIABILITY) in logged
    steps = torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"]
    config = mend_config(trained, small_world, world_model, epochs=2)
    main(["fit", "--config", str(config), "--ckpt_path", str(checkpoints / "last.ckpt")])
    resumed = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * steps


def test_validate_refuses_an_untrained_hypernetwork(tmp_path, small_world, world_model):
    config = mend_config(tmp_path, small_world, world_model, batch_size=1)
    with pytest.raises(ValueError, match="--ckpt_path"):
        main(["validate", "--config", str(config)])


def test_validate_edits_with_the_trained_hypernetwork(trained, tmp_path, small_world, world_model):
    ckpt = trained / "runs" / "mend" / "checkpoints" / "mend.ckpt"
    config = mend_config(tmp_path, small_world, world_model, batch_size=1)
    main(["validate", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.limit", "2"])
    results = read_results(tmp_path / "results" / "edit" / "mend_vqa_val.json")
    scores, settings = results["scores"], results["settings"]
    assert {names.stage_key("val", m) for m in names.EDIT_METRICS + names.COST_METRICS} <= set(scores)
    assert all(0 <= scores[names.stage_key("val", m)] <= 100 for m in names.EDIT_METRICS)
    assert settings["method"] == "MENDModule" and settings["run_key"]["parts"]["weights"]
    # validate takes its settings from its own config, only the weights from the checkpoint
    assert len(list((tmp_path / "runs" / "mend_vqa" / "edits").glob("records_*.json"))) == 2
