"""The comparison command: plans composed from the shipped configs, the table and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from unike_pl.cli import main
from unike_pl.compare.plan import ComparisonConfigError, build_plan
from unike_pl.compare.plots import PLOTTED, metric_bars, space_projection
from unike_pl.compare.table import collect_rows, csv_table, markdown_table, write_tables
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.memory import KnowledgeMemory, Triplet

SHIPPED = Path(__file__).parents[1] / "configs" / "compare.yaml"


def test_the_shipped_comparison_covers_every_method_and_protocol():
    plan = build_plan(SHIPPED)
    assert plan.methods == [
        "FT",
        "T-Patcher",
        "IKE",
        "latent IKE",
        "intrinsic + IKE",
        "intrinsic + latent IKE, no collaboration",
        "UniKE",
        "UniKE + localization",
        "LDKE",
        "MEND",
        "SERAC",
    ]
    assert plan.protocols == ["one-step", "sequential T=10", "sequential T=20", "cross-task T=9"]
    assert len(plan.runs) == 11 * 4 + 11 * 2  # one-step with two more seeds
    assert {Path(p.checkpoint).name for p in plan.prerequisites} == {
        "encoders.ckpt",
        "mend.ckpt",
        "serac.ckpt",
        "router.ckpt",
    }
    ldke = composed(plan, "LDKE", "one-step")
    assert ldke.config["model"]["class_path"] == "unike_pl.modules.LDKEModule"
    assert ldke.config["model"]["init_args"]["localization"]["scorer"] == "attribution"
    assert ldke.ckpt_path.endswith("encoders.ckpt")


@pytest.mark.parametrize(
    ("name", "label", "values"),
    [
        ("compare_top_k.yaml", "K (retrieved states per edit)", [5, 10, 20, 40, 80]),
        ("compare_alpha.yaml", "fixed α", [0.1, 0.3, 0.5, 0.7, 0.9]),
    ],
)
def test_the_shipped_sweeps_vary_one_setting_of_unike(name, label, values):
    plan = build_plan(SHIPPED.parent / name)
    assert plan.sweep.label == label and sorted(plan.sweep.values.values()) == values
    key = "top_k" if "top_k" in name else "alpha"
    for method, value in plan.sweep.values.items():
        latent = composed(plan, method, "one-step").config["model"]["init_args"]["latent"]
        assert latent[key] == value and latent["top_k" if key == "alpha" else "alpha"] == (
            40 if key == "alpha" else None
        )
    assert all(run.ckpt_path.endswith("encoders.ckpt") for run in plan.runs)


def test_a_sweep_is_drawn_against_its_setting(tmp_path):
    from unike_pl.compare.plan import Sweep
    from unike_pl.compare.plots import sweep_lines

    rows = [
        {"method": method, "protocol": "one-step", **{metric: score for metric in PLOTTED}}
        for method, score in (("a", 10.0), ("b", 20.0), ("reference", 50.0))
    ]
    path = sweep_lines(rows, Sweep("x", {"a": 1.0, "b": 2.0}), "one-step", tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def composed(plan, method, protocol):
    return next(run for run in plan.runs if run.method == method and run.protocol == protocol)


def test_methods_override_the_base_model_and_protocols_the_data():
    plan = build_plan(SHIPPED)
    patcher = composed(plan, "T-Patcher", "sequential T=20").config
    intrinsic = patcher["model"]["init_args"]["intrinsic"]
    assert (intrinsic["neurons"], intrinsic["layers"], intrinsic["beta"]) == (1, 1, 0.0)
    assert intrinsic["learning_rate"] == 0.01  # kept from the base config
    assert patcher["model"]["init_args"]["latent"] is None
    assert patcher["data"]["init_args"]["batch_size"] == 20
    ft = composed(plan, "FT", "cross-task T=9")
    args = ft.config["model"]["init_args"]
    assert ft.config["model"]["class_path"].endswith("FineTuneModule")
    assert "memory" not in args and args["backbone"]["name_or_path"] == "checkpoints/world-blip2"
    assert ft.config["data"]["init_args"]["cross_task_file"].endswith("caption_eval_edit.json")
    assert args["edits_dir"] == str(ft.folder / "edits")
    assert composed(plan, "UniKE", "one-step").ckpt_path.endswith("encoders.ckpt")


@pytest.mark.parametrize("method", ["FT", "T-Patcher", "IKE", "intrinsic + IKE", "UniKE", "MEND", "SERAC"])
def test_every_composed_run_parses_as_a_validate_config(method, tmp_path, capsys):
    assert_parses_as_validate_config(
        composed(build_plan(SHIPPED), method, "sequential T=10"), tmp_path, capsys
    )


def assert_parses_as_validate_config(run, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(run.config))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == run.config["model"]["class_path"]


def test_unknown_methods_and_missing_files_are_named(tmp_path):
    with pytest.raises(ComparisonConfigError, match="no method.*Nope"):
        build_plan(SHIPPED, methods=["Nope"])
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({"base": "configs/missing.yaml", "methods": {}, "protocols": {}}))
    with pytest.raises(ComparisonConfigError, match=r"compare.yaml: base names configs/missing.yaml"):
        build_plan(config)


def finished_plan(tmp_path):
    settings = yaml.safe_load(SHIPPED.read_text())
    del settings["seeds"]  # one run per cell
    settings.update(runs_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "out"))
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(settings))
    plan = build_plan(config, methods=["FT", "UniKE"], protocols=["one-step", "sequential T=10"])
    for i, run in enumerate(plan.runs[:3]):  # the last run has not finished
        scores = {f"val/{key}": 10.0 * i + 1 for key in ("reliability", "t_locality", "edit_seconds")}
        run.result_file.parent.mkdir(parents=True)
        run.result_file.write_text(json.dumps({"scores": scores, "settings": {}}))
        (run.folder / "timing.json").write_text(json.dumps({"seconds": 90.0}))
    return plan


def test_the_table_holds_the_finished_runs(tmp_path):
    plan = finished_plan(tmp_path)
    rows = collect_rows(plan)
    assert [(r["method"], r["protocol"]) for r in rows] == [
        ("FT", "one-step"),
        ("FT", "sequential T=10"),
        ("UniKE", "one-step"),
    ]
    assert rows[2]["reliability"] == 21.0 and rows[2]["run_minutes"] == 1.5 and rows[2]["m_locality"] is None
    markdown = markdown_table(rows).splitlines()
    assert markdown[0].startswith("| method | protocol | seeds | Rel | T-Gen | M-Gen | T-Loc | M-Loc |")
    assert markdown[4].startswith("| UniKE | one-step | 1 | 21.0 | – |")
    assert csv_table(rows).splitlines()[0].startswith("method,protocol,seeds,reliability,t_generality")
    written = write_tables(plan, rows)
    assert all(path.is_file() for path in written)
    png = metric_bars(rows, plan.protocols, plan.methods, tmp_path / "bars.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_spaces_figure_projects_the_memory_through_the_encoders(tmp_path):
    count, hidden = 40, 16
    states = {7: {kind: torch.randn(count, hidden) for kind in ("sem", "pos", "neg", "ffn")}}
    questions = ["what colour is it?", "how many are there?"]
    triplets = [Triplet("f.json", i, "edit", questions[i % 2], "a", "b") for i in range(count)]
    memory = KnowledgeMemory([7], states, triplets)
    png = space_projection(memory, DisentangledEncoders([7], hidden, 8), tmp_path / "spaces.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_cell_is_not_run_again_unless_its_config_changed(tmp_path, monkeypatch):
    from unike_pl.compare import __main__ as command

    plan = finished_plan(tmp_path)
    calls = []

    def fake_cli(args):
        calls.append(args)
        # Lightning writes its resolved config as config.yaml in the run folder: it must not matter
        (Path(args[2]).parent / "config.yaml").write_text("overwritten")

    monkeypatch.setattr(command, "cli_main", fake_cli)
    unfinished = plan.runs[3]
    command.run_one(unfinished)  # no result yet: runs
    assert calls[-1] == [
        "validate",
        "--config",
        str(unfinished.folder / "run.yaml"),
        "--ckpt_path",
        unfinished.ckpt_path,
    ]
    unfinished.result_file.parent.mkdir(parents=True, exist_ok=True)
    unfinished.result_file.write_text("{}")
    command.run_one(unfinished)  # finished with the same config: skipped
    assert len(calls) == 1
    assert (unfinished.folder / "timing.json").is_file()
    (unfinished.folder / "timing.json").write_text('{"seconds": 60.0}')
    (unfinished.folder / "edits").mkdir()
    (unfinished.folder / "edits" / "records_000000_001.json").write_text("{}")
    unfinished.config["data"]["init_args"]["limit"] = 7
    command.run_one(unfinished)  # the config changed: runs again, resuming from stored edits
    assert len(calls) == 2
    assert (unfinished.folder / "timing.json").read_text() == '{"seconds": 60.0}'  # not a resumed run's time


def test_running_some_cells_reports_every_finished_cell(tmp_path, monkeypatch):
    from unike_pl.compare import __main__ as command

    finished_plan(tmp_path)  # FT one-step, FT T=10 and UniKE one-step have finished
    reported = []
    monkeypatch.setattr(command, "run_prerequisites", lambda plan: None)
    monkeypatch.setattr(command, "run_one", lambda run: None)
    monkeypatch.setattr(command, "report", lambda plan: reported.append(collect_rows(plan)))
    config = tmp_path / "compare.yaml"
    command.main(["--config", str(config), "--methods", "UniKE", "--protocols", "one-step"])
    assert [(r["method"], r["protocol"]) for r in reported[0]] == [
        ("FT", "one-step"),
        ("FT", "sequential T=10"),
        ("UniKE", "one-step"),
    ]


def test_seeded_cells_run_in_their_own_folders_with_their_seed():
    plan = build_plan(SHIPPED, methods=["UniKE"])
    one_step = [run for run in plan.runs if run.protocol == "one-step"]
    assert [run.seed for run in one_step] == [0, 1, 2]
    own, second, third = one_step
    assert "seed" not in own.config["model"]["init_args"]  # the base config, as unseeded plans compose it
    assert second.folder == own.folder / "seed_1" and third.folder == own.folder / "seed_2"
    for run in (second, third):
        assert run.config["seed_everything"] == run.seed == run.config["model"]["init_args"]["seed"]
        assert run.config["model"]["init_args"]["edits_dir"] == str(run.folder / "edits")
        report = run.config["trainer"]["callbacks"][-1]["init_args"]
        assert report["output_dir"] == str(run.folder / "results")
    assert [run.seed for run in plan.runs if run.protocol == "sequential T=10"] == [0]


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ({"two-step": [0, 1]}, "seeds names no protocol 'two-step'"),
        ({"one-step": [0, 0]}, "distinct integers"),
        ({"one-step": []}, "non-empty list"),
        ([0, 1], "must map protocols"),
    ],
)
def test_bad_seeds_are_named(tmp_path, seeds, message):
    settings = yaml.safe_load(SHIPPED.read_text())
    settings["seeds"] = seeds
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(ComparisonConfigError, match=message):
        build_plan(config)


def test_a_cell_of_several_seeds_is_one_row_of_means_and_deviations(tmp_path):
    settings = yaml.safe_load(SHIPPED.read_text())
    settings.update(runs_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "out"))
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(settings))
    plan = build_plan(config, methods=["UniKE"], protocols=["one-step", "sequential T=10"])
    for run, reliability in zip(plan.runs, (90.0, 96.0, 99.0, 50.0), strict=True):
        scores = {"val/reliability": reliability, "val/edit_seconds": 1.0}
        groups = {"unseen-rule": {"val/reliability": reliability - 10}}
        run.result_file.parent.mkdir(parents=True)
        run.result_file.write_text(json.dumps({"scores": scores, "scores_by_group": groups}))
    one_step, sequential = collect_rows(plan)
    assert one_step["seeds"] == 3 and one_step["reliability"] == 95.0
    assert one_step["reliability_std"] == pytest.approx(4.5826, abs=1e-4)  # sample deviation of 90, 96, 99
    assert one_step["unseen-rule/reliability"] == 85.0 and one_step["edit_seconds_std"] == 0.0
    assert sequential["seeds"] == 1 and "reliability_std" not in sequential
    markdown = markdown_table([one_step, sequential]).splitlines()
    assert markdown[2].startswith("| UniKE | one-step | 3 | 95.0 ± 4.6 | – |")
    assert markdown[2].endswith("| 85.0 ± 4.6 |") and markdown[3].endswith("| 40.0 |")
    header, first = csv_table([one_step, sequential]).splitlines()[:2]
    assert "reliability_std" in header.split(",") and "unseen-rule/reliability_std" in header.split(",")
    assert metric_bars([one_step, sequential], plan.protocols, plan.methods, tmp_path / "b.png").is_file()


UNIKE_ABLATIONS = SHIPPED.parent / "compare_unike.yaml"


def test_the_ablation_rows_each_change_one_part_of_unike():
    plan = build_plan(UNIKE_ABLATIONS)
    assert len(plan.methods) == 12 and len(plan.runs) == 12 * 3
    unike = composed(plan, "UniKE", "one-step").config["model"]["init_args"]
    for method in plan.methods[1:]:
        args = composed(plan, method, "one-step").config["model"]["init_args"]
        changed = {part for part in ("intrinsic", "latent") if args[part] != unike[part]}
        assert changed, f"{method} is UniKE itself"
        assert {k for k in args if args[k] != unike[k]} <= {"intrinsic", "latent", "edits_dir"}


@pytest.mark.parametrize(
    "method", ["intrinsic only", "latent knowledge only, gated", "W_ζ learned per edit (released code)"]
)
def test_the_ablation_runs_parse_as_validate_configs(method, tmp_path, capsys):
    run = composed(build_plan(UNIKE_ABLATIONS), method, "one-step")
    assert_parses_as_validate_config(run, tmp_path, capsys)
