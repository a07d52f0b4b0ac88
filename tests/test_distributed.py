"""The same scores on one process and on two (DDP on CPU with gloo): no record scored twice, sequences
kept whole, and every edit's random numbers its own."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import shipped_config, write_config
from tests.test_unike import MEMORY_LIMIT, disentangle_config
from unike_pl.cli import main
from unike_pl.data.sharding import WholeBatchShards
from unike_pl.metrics import names

RECORDS, SEQUENCE = 7, 2


def test_whole_batches_are_dealt_to_the_processes_in_turn():
    shards = [list(WholeBatchShards(range(RECORDS), SEQUENCE, 2, rank)) for rank in (0, 1)]
    assert shards == [[0, 1, 4, 5], [2, 3, 6]]  # batches (0, 1) (2, 3) (4, 5) (6): none repeated
    loader = torch.utils.data.DataLoader(
        range(RECORDS), batch_size=SEQUENCE, sampler=WholeBatchShards(range(RECORDS), SEQUENCE, 2, 1)
    )
    assert [batch.tolist() for batch in loader] == [[2, 3], [6]]
    with pytest.raises(ValueError, match="3 records in batches of 2 make 2 batch"):
        WholeBatchShards(range(3), 2, 4, 0)


def intrinsic_config(root: Path, world: Path, model: Path) -> Path:
    """configs/edit_vqa.yaml with intrinsic neurons only (their keys are jittered: randomness per edit),
    sequences of 2 edits over 7 records, so the last batch is short."""
    settings = shipped_config("edit_vqa.yaml", root, world, model)
    settings["trainer"]["callbacks"] = settings["trainer"]["callbacks"][1:]  # no progress bar
    settings["trainer"]["enable_progress_bar"] = False
    init = settings["model"]["init_args"]
    init["memory"].update(MEMORY_LIMIT)
    init["intrinsic"].update(max_steps=3, beta=0.0, key_noise=0.5)
    init["latent"] = None
    init["scoring"].update(max_new_tokens=2, pre_edit_cache=None)
    settings["data"]["init_args"].update(limit=RECORDS, batch_size=SEQUENCE)
    root.mkdir(parents=True, exist_ok=True)
    return write_config(settings, root / "edit.yaml")


def per_record_scores(edits: Path) -> dict[int, dict[str, float]]:
    scores = {}
    for file in edits.glob("records_*.json"):
        stored = json.loads(file.read_text())
        for i, record in enumerate(stored["records"]):
            scores[record] = {metric: values[i] for metric, values in stored["scores"].items()}
    return scores


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_world, world_model) -> Path:
    """A folder with the knowledge memory and the encoders fitted for one epoch (one process)."""
    root = tmp_path_factory.mktemp("fitted")
    main(["fit", "--config", str(disentangle_config(root, small_world, world_model, 1))])
    return root


def on_two_processes(*args: str) -> None:
    """`python -m unike_pl <args>` under DDP with 2 CPU processes (gloo), as a user runs it."""
    command = [sys.executable, "-m", "unike_pl", *args]
    command += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]


def test_two_processes_score_every_record_once_as_one_process_does(
    tmp_path, fitted, small_world, world_model
):
    one = intrinsic_config(fitted, small_world, world_model)  # reads the memory the fit built
    main(["validate", "--config", str(one)])
    config = yaml.safe_load(one.read_text())
    config["model"]["init_args"]["edits_dir"] = str(tmp_path / "edits")
    config["trainer"]["callbacks"][-1]["init_args"]["output_dir"] = str(tmp_path / "results")
    on_two_processes("validate", "--config", str(write_config(config, tmp_path / "edit.yaml")))

    single = json.loads(next((fitted / "results").rglob("*_val.json")).read_text())
    double = json.loads(next((tmp_path / "results").rglob("*_val.json")).read_text())
    assert single["records"] == double["records"] == RECORDS
    assert (single["settings"]["devices"], double["settings"]["devices"]) == (1, 2)
    assert double["settings"]["strategy"] == "DDPStrategy"
    timing = names.stage_key("val", names.EDIT_SECONDS)
    assert timing in single["scores"]
    for key, value in single["scores"].items():
        if key != timing:
            assert double["scores"][key] == pytest.approx(value, abs=1e-4), key
    first = per_record_scores(fitted / "runs" / "edit_vqa" / "edits")
    second = per_record_scores(tmp_path / "edits")
    assert sorted(first) == sorted(second) == list(range(RECORDS))
    assert first == second


def test_the_encoders_are_scored_on_the_whole_held_out_split_on_two_processes(
    tmp_path, fitted, small_world, world_model
):
    """Validation of the DisentangleModule (truthfulness separation, semantic top-1, W_ζ's R², the gate
    threshold, the loss) is the same on 2 processes as on 1: each process's share is gathered."""
    config = disentangle_config(tmp_path, small_world, world_model, 1)
    settings = yaml.safe_load(config.read_text())
    settings["data"]["init_args"]["memory"]["cache_dir"] = str(fitted / "runs" / "knowledge_memory")
    settings["data"]["init_args"]["batch_size"] = 2  # several held-out batches for two processes
    checkpoint = str(fitted / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt")
    logged = {}
    for processes in (1, 2):
        settings["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / f"logs{processes}")
        write_config(settings, tmp_path / f"validate{processes}.yaml")
        args = (
            "validate",
            "--config",
            str(tmp_path / f"validate{processes}.yaml"),
            "--ckpt_path",
            checkpoint,
        )
        main(list(args)) if processes == 1 else on_two_processes(*args)
        rows = list(csv.DictReader(next((tmp_path / f"logs{processes}").rglob("metrics.csv")).open()))
        logged[processes] = {
            key: float(value)
            for row in rows
            for key, value in row.items()
            if value and key.startswith("val/")
        }
    keys = ("val/truth_separation", "val/semantic_top1", "val/zeta_map_r2", "val/gate_threshold", "val/loss")
    assert all(key in logged[1] for key in keys)
    for key, value in logged[1].items():
        assert logged[2][key] == pytest.approx(value, abs=1e-4), key
