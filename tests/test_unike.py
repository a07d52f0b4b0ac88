"""UniKE end to end on a small generated world: memory + encoders through `fit`, edits through `validate`,
and resumption of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import shipped_config, write_config
from unike_pl.cli import main
from unike_pl.editing.editor import UniKEEditor
from unike_pl.errors import UserError
from unike_pl.metrics import names, read_results

MEMORY_LIMIT = {"limit": 6, "max_new_tokens": 3, "chunk_records": 4}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, small_world, world_model) -> Path:
    """Encoders trained by `fit --config configs/disentangle.yaml` (shrunk), and the run folder."""
    root = tmp_path_factory.mktemp("disentangle")
    main(["fit", "--config", str(disentangle_config(root, small_world, world_model, epochs=2))])
    return root


def disentangle_config(root: Path, world: Path, model: Path, epochs: int) -> Path:
    settings = shipped_config("disentangle.yaml", root, world, model)
    settings["data"]["init_args"]["memory"].update(MEMORY_LIMIT)
    settings["data"]["init_args"]["batch_size"] = 8
    settings["trainer"]["max_epochs"] = epochs
    return write_config(settings, root / "disentangle.yaml")


def edit_config(root: Path, world: Path, model: Path, **model_args) -> Path:
    settings = shipped_config("edit_vqa.yaml", root, world, model)
    init = settings["model"]["init_args"]
    init["memory"].update(MEMORY_LIMIT)
    init["intrinsic"].update(max_steps=3)
    init["scoring"]["max_new_tokens"] = 2
    init.update(model_args)
    settings["data"]["init_args"]["limit"] = 3
    return write_config(settings, root / "edit.yaml")


def test_fit_builds_the_memory_and_saves_encoders_with_zeta(encoders):
    memory = list((encoders / "runs" / "knowledge_memory").glob("*/memory.pt"))
    assert len(memory) == 1
    stored = torch.load(memory[0], weights_only=True)
    assert len(stored["triplets"]) > 4 and len(stored["layers"]) == 4
    checkpoint = torch.load(
        encoders / "runs" / "disentangle" / "checkpoints" / "last.ckpt", weights_only=False
    )
    weights = checkpoint["state_dict"]
    assert any(key.startswith("encoders.truth.") for key in weights)
    assert weights["encoders.zeta"].abs().sum() > 0
    assert (
        weights["encoders.zeta_map"].abs().sum() > 0 and weights["encoders.semantic_zeta_map"].abs().sum() > 0
    )
    assert 0 < float(weights["encoders.gate_threshold"]) <= 1  # fitted on the held-out records
    logged = next((encoders / "runs" / "disentangle" / "logs").rglob("metrics.csv")).read_text()
    for name in ("truth_separation", "semantic_top1", "zeta_map_r2", "gate_threshold", "gate_out_of_scope"):
        assert f"val/{name}" in logged


def test_fit_resumes_from_its_checkpoint(encoders, small_world, world_model):
    last = encoders / "runs" / "disentangle" / "checkpoints" / "last.ckpt"
    steps = torch.load(last, weights_only=False)["global_step"]
    config = disentangle_config(encoders, small_world, world_model, epochs=3)
    main(["fit", "--config", str(config), "--ckpt_path", str(last)])
    resumed = torch.load(last, weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == steps * 3 // 2


def test_a_memory_build_resumes_from_its_chunks(encoders):
    chunks = sorted((encoders / "runs" / "knowledge_memory").glob("*/chunks/*.pt"))
    assert len(chunks) >= 2  # 6 records of two sources in chunks of 4


def test_validate_edits_scores_and_resumes(tmp_path, encoders, small_world, world_model, monkeypatch):
    ckpt = str(encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt")
    config = edit_config(tmp_path, small_world, world_model, memory={**read_memory(encoders), **MEMORY_LIMIT})
    main(["validate", "--config", str(config), "--ckpt_path", ckpt])
    first = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")
    scores = first["scores"]
    assert {names.stage_key("val", m) for m in names.EDIT_METRICS + names.COST_METRICS} <= set(scores)
    assert all(0 <= scores[names.stage_key("val", m)] <= 100 for m in names.EDIT_METRICS)
    assert len(list((tmp_path / "runs" / "edit_vqa" / "edits").glob("records_*.json"))) == 3
    gate = first["diagnostics"]["gate_alpha"]  # what the gate let in, per case (α) and layer (relevance)
    assert set(gate) >= {names.EDIT, names.REPHRASE, names.TEXT_LOCALITY, names.MULTIMODAL_LOCALITY}
    assert all(0 <= value <= 1 for values in gate.values() for value in values.values())
    assert "alpha" in gate[names.EDIT] and len(gate[names.EDIT]) == 1 + 4

    def refuse(*args, **kwargs):
        raise AssertionError("a finished edit was redone")

    monkeypatch.setattr(UniKEEditor, "edit", refuse)
    main(["validate", "--config", str(config), "--ckpt_path", ckpt])
    again = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")
    assert again["scores"] == scores and again["diagnostics"] == first["diagnostics"]


def test_collaboration_needs_trained_encoders(tmp_path, encoders, small_world, world_model):
    config = edit_config(tmp_path, small_world, world_model, memory={**read_memory(encoders), **MEMORY_LIMIT})
    with pytest.raises(ValueError, match="--ckpt_path"):
        main(["validate", "--config", str(config)])


def test_intrinsic_only_runs_without_encoders(tmp_path, encoders, small_world, world_model):
    config = edit_config(
        tmp_path,
        small_world,
        world_model,
        memory={**read_memory(encoders), **MEMORY_LIMIT},
        latent=None,
        intrinsic={"max_steps": 3, "beta": 0.0},
    )
    main(["validate", "--config", str(config)])
    scores = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["scores"]
    assert names.stage_key("val", names.RELIABILITY) in scores


def test_t_patcher_needs_no_fit_first(tmp_path, small_world, world_model, capsys):
    """A method that uses the memory but no encoders (T-Patcher) builds the memory itself when missing."""
    shipped = yaml.safe_load(Path("configs/edit_vqa.yaml").read_text())["model"]["init_args"]["memory"]
    memory = {**shipped, "cache_dir": str(tmp_path / "fresh_cache"), **MEMORY_LIMIT}
    config = edit_config(
        tmp_path,
        small_world,
        world_model,
        memory=memory,
        latent=None,
        intrinsic={"neurons": 1, "layers": 1, "max_steps": 3, "beta": 0.0},
    )
    main(["validate", "--config", str(config)])
    assert list((tmp_path / "fresh_cache").glob("*/memory.pt"))
    assert "mining the knowledge memory" in capsys.readouterr().out
    scores = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["scores"]
    assert names.stage_key("val", names.RELIABILITY) in scores


def test_a_diverged_edit_is_counted_marked_and_fails_the_run(tmp_path, encoders, small_world, world_model):
    """Neurons trained at learning rate 1e30 blow the logits up: the run writes its results with the count,
    marks the edit files, and fails unless `scoring.allow_non_finite` (it used to score 0, exit 0)."""
    memory = {**read_memory(encoders), **MEMORY_LIMIT}
    intrinsic = {"max_steps": 3, "beta": 0.0, "learning_rate": 1e30, "stop_early": False}
    config = edit_config(tmp_path, small_world, world_model, memory=memory, latent=None, intrinsic=intrinsic)
    with pytest.raises(RuntimeError, match=r"\d edit\(s\) gave non-finite logits"):
        main(["validate", "--config", str(config)])
    result = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")
    diverged = result["scores"][names.stage_key("val", names.NON_FINITE_EDITS)]
    reports = [
        edit
        for file in (tmp_path / "runs" / "edit_vqa" / "edits").glob("records_*.json")
        for edit in json.loads(file.read_text())["edits"]
    ]
    assert diverged == sum(not edit["finite"] for edit in reports) > 0
    main(["validate", "--config", str(config), "--model.init_args.scoring.allow_non_finite", "true"])


def test_edits_made_with_other_encoders_are_refused(tmp_path, encoders, small_world, world_model):
    """Another encoders checkpoint (one weight changed) cannot read back the edits of the first."""
    ckpt = encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt"
    memory = {**read_memory(encoders), **MEMORY_LIMIT}
    config = edit_config(tmp_path, small_world, world_model, memory=memory)
    main(["validate", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.limit", "1"])
    other = torch.load(ckpt, weights_only=False)
    other["state_dict"]["encoders.gate_threshold"] += 0.01
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=r"another run key \(weights differ\)"):
        main(["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "other.ckpt")])


def read_memory(root: Path) -> dict:
    """The memory settings of the disentangle run (same cache, so edits reuse its memory)."""
    return yaml.safe_load((root / "disentangle.yaml").read_text())["data"]["init_args"]["memory"]


def test_sequential_edits_accumulate_and_are_scored_after_each_and_at_the_end(
    tmp_path, encoders, small_world, world_model
):
    ckpt = str(encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt")
    config = edit_config(tmp_path, small_world, world_model, memory={**read_memory(encoders), **MEMORY_LIMIT})
    main(["validate", "--config", str(config), "--ckpt_path", ckpt, "--data.init_args.batch_size", "3"])
    stored = list((tmp_path / "runs" / "edit_vqa" / "edits").glob("records_*.json"))
    assert len(stored) == 1  # one sequence of T = 3 edits
    result = json.loads(stored[0].read_text())
    assert result["records"] == [0, 1, 2] and len(result["edits"]) == 3
    assert len(result["immediate"][names.RELIABILITY]) == 3 and len(result["scores"][names.T_LOCALITY]) == 3
    settings = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["settings"]
    assert settings["sequence_length"] == 3


def test_a_second_run_reads_the_pre_edit_predictions_from_disk(
    tmp_path, encoders, small_world, world_model, monkeypatch
):
    from unike_pl.modules import edit_loop

    memory = {**read_memory(encoders), **MEMORY_LIMIT}
    config = edit_config(
        tmp_path,
        small_world,
        world_model,
        memory=memory,
        latent=None,
        intrinsic={"max_steps": 3, "beta": 0.0},
    )
    main(["validate", "--config", str(config)])
    first = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["scores"]
    cached = list((tmp_path / "runs" / "pre_edit_cache").glob("*/records_*.pt"))
    assert len(cached) == 3 and (cached[0].parent / "key.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the pre-edit predictions were computed again")

    monkeypatch.setattr(edit_loop, "pre_edit_predictions", refuse)
    # new per-edit folder: every edit is redone, only the unedited model's predictions come from disk
    main(["validate", "--config", str(config), "--model.init_args.edits_dir", str(tmp_path / "again")])
    again = read_results(tmp_path / "results" / "edit" / "unike_vqa_val.json")["scores"]
    scored = [names.stage_key("val", metric) for metric in names.EDIT_METRICS]
    assert [again[key] for key in scored] == [first[key] for key in scored]


def test_the_pre_edit_cache_checks_its_records_and_keys(tmp_path):
    from unike_pl.pre_edit_cache import PreEditCache

    calls = []

    def compute():
        calls.append(1)
        return {names.TEXT_LOCALITY: torch.arange(6).reshape(1, 2, 3)}

    cache = PreEditCache(tmp_path, {"model": "a"})
    first = cache.predictions([4], compute)
    assert torch.equal(cache.predictions([4], compute)[names.TEXT_LOCALITY], first[names.TEXT_LOCALITY])
    assert len(calls) == 1
    assert PreEditCache(tmp_path, {"model": "b"}).folder != cache.folder
    cache.path([4]).rename(cache.path([5]))
    with pytest.raises(ValueError, match=r"holds records \[4\], expected \[5\]"):
        cache.predictions([5], compute)


def test_an_encoders_checkpoint_without_the_fitted_gate_is_refused(
    tmp_path, encoders, small_world, world_model
):
    stale = torch.load(
        encoders / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt", weights_only=False
    )
    for key in (
        "encoders.zeta_map",
        "encoders.semantic_zeta",
        "encoders.semantic_zeta_map",
        "encoders.gate_threshold",
    ):
        del stale["state_dict"][key]
    torch.save(stale, tmp_path / "stale.ckpt")
    config = edit_config(tmp_path, small_world, world_model, memory={**read_memory(encoders), **MEMORY_LIMIT})
    with pytest.raises(ValueError, match="refit it"):
        main(["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "stale.ckpt")])
