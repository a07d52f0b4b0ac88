"""User errors: one line naming the file or setting and exit 2 from the command line (the traceback only
with --debug); files that cannot be read are named, whatever the reader said."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import shrink
from unike_pl.cli import main
from unike_pl.errors import USER_ERROR_EXIT, MissingFile, UserError, exit_on_user_error
from unike_pl.knowledge.memory import KnowledgeMemory


def command_line(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "unike_pl", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_a_user_error_is_one_line_and_exit_2_from_the_command_line(tmp_path, tiny_models, mmedit_dir):
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    (mmedit_dir / "vqa_eval.json").unlink()
    finished = command_line("validate", "--config", str(config))
    assert finished.returncode == USER_ERROR_EXIT
    assert "Traceback" not in finished.stderr
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "vqa_eval.json does not exist" in errors[0] and "--debug" in errors[0]


def test_debug_shows_the_traceback(monkeypatch):
    def fail() -> None:
        raise MissingFile("data/x.json does not exist")

    monkeypatch.setattr(sys, "argv", ["unike_pl", "validate"])
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(fail)()
    assert stopped.value.code == USER_ERROR_EXIT
    monkeypatch.setattr(sys, "argv", ["unike_pl", "validate", "--debug"])
    with pytest.raises(MissingFile):  # raised as is: Python prints the traceback
        exit_on_user_error(fail)()
    assert sys.argv == ["unike_pl", "validate"]  # the flag is not passed on to the command's parser


def test_a_bug_is_not_hidden_as_a_user_error(monkeypatch):
    def bug() -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(sys, "argv", ["unike_pl"])
    with pytest.raises(KeyError):
        exit_on_user_error(bug)()


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 not a zip", b"\x80\x02 pickle"], ids=["empty", "zip", "pickle"]
)
def test_an_unreadable_checkpoint_is_named(tmp_path, tiny_models, mmedit_dir, content):
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    with pytest.raises(UserError, match=rf"{broken}: cannot be read as a Lightning checkpoint"):
        main(["validate", "--config", str(config), "--ckpt_path", str(broken)])


def test_a_file_that_is_no_checkpoint_is_named(tmp_path, tiny_models, mmedit_dir):
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(UserError, match=rf"{other}: not a Lightning checkpoint \(it has no state_dict\)"):
        main(["validate", "--config", str(config), "--ckpt_path", str(other)])


def test_a_truncated_memory_is_named(tmp_path):
    path = tmp_path / "memory.pt"
    torch.save({"layers": [3], "states": {}, "triplets": []}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match=rf"{path}: cannot be read as a knowledge memory"):
        KnowledgeMemory.load(path)
    with pytest.raises(MissingFile, match=rf"{tmp_path / 'none.pt'} does not exist: expected a knowledge"):
        KnowledgeMemory.load(tmp_path / "none.pt")
