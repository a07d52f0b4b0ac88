"""Atomic writes: a killed writer never leaves a half-written file or folder, and its leftovers go."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unike_pl.io import atomic_directory, atomic_write_text, remove_leftovers

FILES = 300


def write_folder(path: Path, version: int) -> None:
    with atomic_directory(path) as staging:
        for i in range(FILES):
            (staging / f"part_{i:03d}.json").write_text(json.dumps({"version": version}))


def folder_versions(path: Path) -> set[int]:
    return {json.loads(file.read_text())["version"] for file in path.glob("part_*.json")}


def test_a_folder_is_replaced_whole_and_leaves_nothing_beside_it(tmp_path):
    write_folder(tmp_path / "model", 1)
    write_folder(tmp_path / "model", 2)
    assert folder_versions(tmp_path / "model") == {2}
    assert len(list((tmp_path / "model").iterdir())) == FILES
    assert [entry.name for entry in tmp_path.iterdir()] == ["model"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    write_folder(tmp_path / "model", 1)
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        staging = self.name.startswith(".model.") and not self.name.endswith(".old")
        if staging and Path(target).name == "model":
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        write_folder(tmp_path / "model", 2)
    assert folder_versions(tmp_path / "model") == {1}
    assert [entry.name for entry in tmp_path.iterdir()] == ["model"]


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_io import write_folder
version = 0
while True:
    version += 1
    write_folder(Path({path!r}), version)
"""


def test_killing_a_writer_never_leaves_a_partial_folder(tmp_path):
    """A process replaces a 300-file folder in a loop and is killed (SIGKILL) at 8 moments: the folder is
    always absent or complete and of one version, and the next write removes what the killed one left."""
    path = tmp_path / "model"
    script = WRITER.format(root=str(Path.cwd()), path=str(path))
    for trial in range(8):
        writer = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(0.6 + 0.07 * trial)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if path.exists():
            assert len(list(path.iterdir())) == FILES, f"trial {trial}: a partial folder"
            assert len(folder_versions(path)) == 1
    write_folder(path, 0)
    assert [entry.name for entry in tmp_path.iterdir()] == ["model"]


def test_leftovers_of_live_writers_are_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(finished.stdout)
    (tmp_path / f".scores.json.{dead}.abc.tmp").write_text("half")
    (tmp_path / f".scores.json.{os.getpid()}.def.tmp").write_text("being written")
    (tmp_path / ".scores.json.notes").write_text("not ours")
    atomic_write_text(tmp_path / "scores.json", "{}")
    names = sorted(entry.name for entry in tmp_path.iterdir())
    assert names == sorted([".scores.json.notes", f".scores.json.{os.getpid()}.def.tmp", "scores.json"])
    assert remove_leftovers(tmp_path / "scores.json") == []
