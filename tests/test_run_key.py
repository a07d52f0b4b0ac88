"""The run key: result and cache folders made under another model, weights, data, images or settings are
refused naming what differs; the same contents elsewhere are accepted; one run at a time per folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ft_config
from unike_pl.cli import main
from unike_pl.errors import UserError
from unike_pl.folder_lock import FolderBusy, FolderLock
from unike_pl.metrics import read_results
from unike_pl.run_key import KEY_FILE, RunKey, differences


def test_a_folder_keeps_its_key_and_refuses_another(tmp_path):
    key = RunKey({"model": "a", "method": {"lr": 0.1, "steps": 3}})
    key.claim(tmp_path, "edits")
    key.claim(tmp_path, "edits")  # the same key: accepted
    assert json.loads((tmp_path / KEY_FILE).read_text())["digest"] == key.digest
    with pytest.raises(UserError, match=r"another run key \(method.lr differ\)"):
        RunKey({"model": "a", "method": {"lr": 0.2, "steps": 3}}).claim(tmp_path, "edits")


def test_a_folder_with_files_but_no_key_is_refused(tmp_path):
    (tmp_path / "records_000000_001.json").write_text("{}")
    with pytest.raises(UserError, match=f"holds edits but no {KEY_FILE}"):
        RunKey({"model": "a"}).claim(tmp_path, "edits")


def test_differences_name_every_changed_leaf():
    old = {"data": {"eval": {"file": "1", "images": "2"}}, "seed": 0}
    new = {"data": {"eval": {"file": "1", "images": "3"}, "cross_task": {"file": "4"}}, "seed": 1}
    assert differences(old, new) == ["data.cross_task", "data.eval.images", "seed"]


# --- on a real editing run (FT on the tiny model: no memory, fast) ----------------------------------------


@pytest.fixture()
def finished(tmp_path, tiny_models, mmedit_dir):
    """A finished FT run with its edits folder and pre-edit cache."""
    main(["validate", "--config", str(ft_config(tmp_path, tiny_models["blip2"], mmedit_dir))])
    return tmp_path, tiny_models["blip2"], mmedit_dir


def rerun(finished, data: Path | None = None, **changes):
    tmp_path, model, mmedit_dir = finished
    main(["validate", "--config", str(ft_config(tmp_path, model, data or mmedit_dir, **changes))])
    return read_results(tmp_path / "results" / "pre_edit_vqa_val.json")


def test_results_record_the_run_key_and_a_rerun_reads_the_edits_back(finished):
    first = read_results(finished[0] / "results" / "pre_edit_vqa_val.json")
    again = rerun(finished)
    assert again["settings"]["run_key"] == first["settings"]["run_key"]
    assert set(first["settings"]["run_key"]["parts"]) == {
        "model",
        "weights",
        "inputs",
        "data",
        "method",
        "data_settings",
        "precision",
    }
    assert again["scores"] == first["scores"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model.init_args.seed": 1}, "method.seed"),
        ({"model.init_args.finetune": {"max_steps": 3}}, "method.finetune.max_steps"),
        (
            {"model.init_args.scoring": {"generation": False, "locality_scorer": "sequence_topk"}},
            "method.scoring.locality_scorer",
        ),
        ({"data.init_args.use_template": True}, "data_settings.use_template"),
    ],
    ids=["seed", "steps", "scorer", "template"],
)
def test_another_setting_is_refused_naming_it(finished, changes, named):
    with pytest.raises(UserError, match=rf"another run key \({named} differ\)"):
        rerun(finished, **changes)


def test_changed_answers_in_the_same_file_are_refused(finished):
    eval_file = finished[2] / "vqa_eval.json"
    records = json.loads(eval_file.read_text())
    records[1]["alt"] = "green"
    eval_file.write_text(json.dumps(records))
    with pytest.raises(UserError, match=r"\(data.eval.file differ\)"):
        rerun(finished)


def test_other_images_under_another_root_are_refused_and_the_same_images_are_accepted(finished):
    tmp_path, _, mmedit_dir = finished
    moved = tmp_path / "moved"
    shutil.copytree(mmedit_dir / "coco", moved / "coco")
    shutil.copytree(mmedit_dir / "rephrase", moved / "rephrase")
    shutil.copy(mmedit_dir / "vqa_eval.json", moved / "vqa_eval.json")
    rerun(finished, data=moved)  # the same bytes elsewhere: the same key, the edits are read back
    Image.new("RGB", (40, 40), (5, 250, 5)).save(moved / "coco" / "val2014" / "loc_2.png")
    with pytest.raises(UserError, match=r"\(data.eval.images differ\)"):
        rerun(finished, data=moved)


def test_the_pre_edit_cache_follows_the_images(finished):
    """The same JSON over other images gets its own pre-edit predictions, not the old ones."""
    tmp_path, _, mmedit_dir = finished
    Image.new("RGB", (40, 40), (5, 250, 5)).save(mmedit_dir / "coco" / "val2014" / "loc_1.png")
    rerun(finished, **{"model.init_args.edits_dir": str(tmp_path / "edits_2")})
    assert len(list((tmp_path / "pre_edit").glob("*/key.json"))) == 2


# --- one run at a time ----------------------------------------------------------------------------------

HOLD = textwrap.dedent(
    """
    import sys, time
    from unike_pl.folder_lock import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_folder_held_by_a_live_run_is_refused_naming_its_owner(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=rf"another run is writing here \(pid {holder.pid} on "):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: its lock file still names it, and the next run takes it over
    with pytest.warns(RuntimeWarning, match=f"ended without releasing it \\(pid {holder.pid} "):
        lock = FolderLock(tmp_path)
        lock.acquire()
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FolderLock(tmp_path).acquire()  # released properly: taken without a warning


def test_a_second_validate_on_a_busy_edits_folder_stops_before_editing(tmp_path, tiny_models, mmedit_dir):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "edits")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy):
            main(["validate", "--config", str(ft_config(tmp_path, tiny_models["blip2"], mmedit_dir))])
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp_path / "edits").glob("records_*.json"))
