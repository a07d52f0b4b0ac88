"""Runs whose output goes to a file show their progress: a plain line every N edits with the running
scores (a rich progress bar draws nothing there until the end)."""

from __future__ import annotations

import re

import yaml

from tests.helpers import ft_config
from unike_pl.cli import main


def test_a_piped_validate_prints_progress_lines_with_running_scores(
    tmp_path, tiny_models, mmedit_dir, capsys
):
    config = ft_config(tmp_path, tiny_models["blip2"], mmedit_dir)
    settings = yaml.safe_load(config.read_text())
    (progress,) = [c for c in settings["trainer"]["callbacks"] if c["class_path"].endswith("ProgressLines")]
    progress["init_args"] = {"every": 2}
    config.write_text(yaml.safe_dump(settings))
    main(["validate", "--config", str(config)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("val ")]
    assert [line.split(":")[0] for line in lines] == ["val 2/4", "val 4/4"]
    scores = r"Rel [\d.]+, T-Gen [\d.]+, M-Gen [\d.]+, T-Loc [\d.]+, M-Loc [\d.]+$"
    assert all(re.search(r"s each, [\d.]+ min left \| " + scores, line) for line in lines)
