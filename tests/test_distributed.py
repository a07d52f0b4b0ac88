"""The same scores on one process and on two (DDP on CPU with gloo): no record scored twice, sequences
kept whole, and every edit's random numbers its own."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from tests.helpers import log_to, shipped_config, write_config
from tests.test_mend import mend_config
from tests.test_pretrain import pretrain_config
from tests.test_unike import MEMORY_LIMIT, disentangle_config
from unike_pl.cli import main
from unike_pl.data.sharding import WholeBatchShards
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.memory import STATE_KINDS, KnowledgeMemory
from unike_pl.metrics import names
from unike_pl.modules.disentangle import DisentangleModule

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
    with one_thread():  # as each of the two processes runs: the mined states are compared bit for bit
        main(["fit", "--config", str(disentangle_config(root, small_world, world_model, 1))])
    return root


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread, as each process of `on_two_processes` runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    assert all(names.stage_key("val", key) in single["scores"] for key in names.IMMEDIATE_METRICS)
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
        log_to(settings, tmp_path / f"logs{processes}")
        write_config(settings, tmp_path / f"validate{processes}.yaml")
        args = (
            "validate",
            "--config",
            str(tmp_path / f"validate{processes}.yaml"),
            "--ckpt_path",
            checkpoint,
        )
        main(list(args)) if processes == 1 else on_two_processes(*args)
        logged[processes] = logged_validation(tmp_path / f"logs{processes}")
    keys = ("val/truth_separation", "val/semantic_top1", "val/zeta_map_r2", "val/gate_threshold", "val/loss")
    assert all(key in logged[1] for key in keys)
    for key, value in logged[1].items():
        assert logged[2][key] == pytest.approx(value, abs=1e-4), key


def test_two_processes_mine_the_same_memory_as_one(tmp_path, fitted, small_world, world_model):
    """`fit` on two processes: each mines its share of the chunks (4 chunks here: 2 sources of 6 records
    in chunks of 4) and process 0 joins them, so the memory equals the one a single process built, tensor
    for tensor; then the encoders train with the negatives gathered over both."""
    config = disentangle_config(tmp_path, small_world, world_model, 1)
    settings = yaml.safe_load(config.read_text())
    settings["data"]["init_args"]["memory"]["cache_dir"] = str(tmp_path / "memory")
    settings["data"]["init_args"]["batch_size"] = 2  # a held-out batch for each process
    on_two_processes("fit", "--config", str(write_config(settings, tmp_path / "mine.yaml")))
    assert (tmp_path / "runs" / "disentangle" / "checkpoints" / "encoders.ckpt").is_file()  # trained on both

    (single,) = (fitted / "runs" / "knowledge_memory").glob("*/memory.pt")
    (double,) = (tmp_path / "memory").glob("*/memory.pt")
    assert single.parent.name == double.parent.name  # the same cache identity
    chunks = sorted(path.name for path in (double.parent / "chunks").iterdir())
    assert chunks == [
        "00_0000000_0000004.pt",
        "00_0000004_0000006.pt",
        "01_0000000_0000004.pt",
        "01_0000004_0000006.pt",
    ]
    one, two = KnowledgeMemory.load(single), KnowledgeMemory.load(double)
    assert len(one) > 4 and one.triplets == two.triplets and one.layers == two.layers
    for layer in one.layers:
        for kind in STATE_KINDS:
            assert torch.equal(one.states[layer][kind], two.states[layer][kind]), (layer, kind)


def logged_validation(logs: Path) -> dict[str, float]:
    """The `val/*` values a CSVLogger wrote under `logs`."""
    rows = list(csv.DictReader(next(logs.rglob("metrics.csv")).open()))
    return {
        key: float(value) for row in rows for key, value in row.items() if value and key.startswith("val/")
    }


def odd_world(world: Path, root: Path) -> Path:
    """`world` with a validation split of 17 pretraining examples: two whole batches of 8 and one short
    batch whose caption is the only one (a category that only one process sees)."""
    odd = root / "world"
    (odd / "pretrain").mkdir(parents=True)
    for entry in world.iterdir():
        if entry.name != "pretrain":
            (odd / entry.name).symlink_to(entry)
    (odd / "pretrain" / "pretrain_train.json").symlink_to(world / "pretrain" / "pretrain_train.json")
    examples = json.loads((world / "pretrain" / "pretrain_val.json").read_text())
    first = examples[:16]
    assert all(example["kind"] != "caption" for example in first)
    caption = next(example for example in examples if example["kind"] == "caption")
    (odd / "pretrain" / "pretrain_val.json").write_text(json.dumps([*first, caption]))
    return odd


def test_pretraining_validation_is_the_same_on_two_processes(tmp_path, small_world):
    """One training step at learning rate 0 (the weights stay the starting model's), then validation on
    17 examples: one process scores 3 batches, two processes 2 and 1, none repeated (Lightning's sampler
    would score one twice). The loss and every category's exact match are synced, the caption category,
    which only process 0 sees, included."""
    world = odd_world(small_world, tmp_path)
    logged = {}
    for processes in (1, 2):
        config = pretrain_config(tmp_path, world, epochs=1)
        settings = yaml.safe_load(config.read_text())
        settings["model"]["init_args"]["learning_rate"] = 0.0
        settings["trainer"].update(limit_train_batches=1, limit_val_batches=1.0)
        log_to(settings, tmp_path / f"logs{processes}")
        args = ("fit", "--config", str(write_config(settings, tmp_path / f"pretrain{processes}.yaml")))
        if processes == 1:
            with one_thread():
                main(list(args))
        else:
            on_two_processes(*args)
        logged[processes] = logged_validation(tmp_path / f"logs{processes}")
    assert {"val/loss", "val/exact_caption", "val/exact_vqa_colour"} <= set(logged[1])
    assert sorted(logged[2]) == sorted(logged[1])
    for key, value in logged[1].items():
        assert logged[2][key] == pytest.approx(value, abs=1e-4), key


def test_mend_fit_validation_finishes_when_one_process_has_nothing_to_score(
    tmp_path, small_world, world_model
):
    """`fit_val_edits: 1` leaves process 1 without a record to score: it still logs (and syncs) the
    validation metrics instead of leaving process 0 waiting for it."""
    config = mend_config(tmp_path, small_world, world_model)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["fit_val_edits"] = 1
    settings["data"]["init_args"]["batch_size"] = 1
    settings["trainer"].update(limit_train_batches=2)
    on_two_processes("fit", "--config", str(write_config(settings, tmp_path / "mend.yaml")))
    logged = logged_validation(tmp_path / "runs" / "mend")
    assert {"val/loss", "val/reliability", "val/t_locality"} <= set(logged)


def test_gathered_negatives_give_each_process_the_loss_of_the_whole_step(monkeypatch):
    """Process 0 of 2 with half of a batch of 8 triplets: with the other half gathered, its contrastive
    losses are those of the whole batch on one process; without gathering they are not."""
    generator = torch.Generator().manual_seed(0)
    batch = {kind: torch.randn(8, 2, 16, generator=generator) for kind in ("sem", "pos", "neg")}
    module = DisentangleModule(encoder_dim=8)
    module.encoders = DisentangledEncoders([0, 1], 16, 8)
    whole = module._losses(module._encode(batch))
    mine, theirs = ({kind: rows[part] for kind, rows in batch.items()} for part in (slice(0, 4), slice(4, 8)))
    others = iter(module._encode(theirs).values())  # in the order `_gathered` asks for them
    monkeypatch.setattr(module, "all_gather", lambda tensor, sync_grads: torch.stack([tensor, next(others)]))
    module._trainer = SimpleNamespace(world_size=2)
    gathered = module._losses(module._gathered(module._encode(mine)))
    for got, expected in zip(gathered, whole, strict=True):
        assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    module.hparams.gather_negatives = False
    alone = module._losses(module._gathered(module._encode(mine)))
    assert all(abs(a.item() - w.item()) > 1e-3 for a, w in zip(alone, whole, strict=True))


class StopAfter(L.Callback):
    """Raises after `batches` validation batches: a run that crashed half-way."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx + 1 == self.batches:
            raise RuntimeError("stopped half-way")


def test_a_run_resumed_half_way_scores_every_record_as_an_uninterrupted_one(
    tmp_path, fitted, small_world, world_model
):
    """7 records in sequences of 2: the run crashes after its second sequence; the rerun reads those 4
    records back and edits the other 3. Every record's scores equal the uninterrupted run's."""
    config = yaml.safe_load(intrinsic_config(tmp_path / "whole", small_world, world_model).read_text())
    config["model"]["init_args"]["memory"]["cache_dir"] = str(fitted / "runs" / "knowledge_memory")
    whole = write_config(config, tmp_path / "whole.yaml")
    with one_thread():
        main(["validate", "--config", str(whole)])
    config["model"]["init_args"]["edits_dir"] = str(tmp_path / "resumed")
    config["trainer"]["callbacks"][-1]["init_args"]["output_dir"] = str(tmp_path / "results")
    resumed = write_config(config, tmp_path / "resumed.yaml")
    crashing = {**config, "trainer": {**config["trainer"]}}
    crashing["trainer"]["callbacks"] = [
        *config["trainer"]["callbacks"],
        {"class_path": "tests.test_distributed.StopAfter", "init_args": {"batches": 2}},
    ]
    with one_thread(), pytest.raises(RuntimeError, match="stopped half-way"):
        main(["validate", "--config", str(write_config(crashing, tmp_path / "crashing.yaml"))])
    assert sorted(per_record_scores(tmp_path / "resumed")) == [0, 1, 2, 3]
    with one_thread():
        main(["validate", "--config", str(resumed)])
    after_resume = per_record_scores(tmp_path / "resumed")
    uninterrupted = per_record_scores(tmp_path / "whole" / "runs" / "edit_vqa" / "edits")
    assert sorted(after_resume) == list(range(RECORDS))
    assert after_resume == uninterrupted


class SlowBatches(L.Callback):
    """Half a second after each validation batch: time to stop a run in the middle."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        time.sleep(0.5)


def test_sigterm_stops_after_the_current_edit_with_partial_results_and_a_failing_exit(
    tmp_path, fitted, small_world, world_model
):
    """SIGTERM while editing: the current edit finishes, the scores so far go to `*_partial.json`
    (marked partial), and the run exits 143 (Lightning's own stop exits 0 and writes nothing). A rerun
    resumes, writes the full results and removes the partial ones."""
    config = yaml.safe_load(intrinsic_config(tmp_path, small_world, world_model).read_text())
    config["model"]["init_args"]["memory"]["cache_dir"] = str(fitted / "runs" / "knowledge_memory")
    config["data"]["init_args"]["batch_size"] = 1
    finished = write_config(config, tmp_path / "edit.yaml")
    config["trainer"]["callbacks"].append({"class_path": "tests.test_distributed.SlowBatches"})
    slow = write_config(config, tmp_path / "slow.yaml")
    edits, results = tmp_path / "runs" / "edit_vqa" / "edits", tmp_path / "results" / "edit"
    command = [sys.executable, "-m", "unike_pl", "validate", "--config"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([*command, str(slow)], env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(edits.glob("records_*.json"))) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM after the current edit" in stderr
    partial = json.loads((results / "unike_vqa_val_partial.json").read_text())
    stored = len(list(edits.glob("records_*.json")))
    assert partial["partial"] is True and 2 <= partial["records"] == stored < RECORDS
    assert not (results / "unike_vqa_val.json").exists()
    resumed = subprocess.run([*command, str(finished)], env=environment, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((results / "unike_vqa_val.json").read_text())["records"] == RECORDS
    assert not (results / "unike_vqa_val_partial.json").exists()
