"""Labelled groups of edits (the world's seen-rule / unseen-rule): read from the `group` field, every metric
computed for all records and per group, written to the result files, kept by a resumed run, and shown by
the comparison table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tests.helpers import shipped_config, shrink, write_config
from unike_pl.callbacks.report import collect_group_scores, scores_table
from unike_pl.cli import main
from unike_pl.compare.table import csv_table, markdown_table, run_row
from unike_pl.data import MMEditDataset, MMEditFormatError, read_mmedit
from unike_pl.data.cases import CrossTaskDataset, EditBatch
from unike_pl.editing.finetune import FineTuneEditor
from unike_pl.metrics import GroupedMetrics, GroupScores, build_editing_metrics, names, read_results
from unike_pl.metrics.results import write_results
from unike_pl.scoring import score_groups

SEEN, UNSEEN = "seen-rule", "unseen-rule"
SETTINGS = {"target_scorer": "token_accuracy", "locality_scorer": "answer_top1", "prompt_template": "none"}


def read(root):
    return read_mmedit(root / "vqa_eval.json", "vqa", root / "coco", root / "rephrase")


def with_groups(root: Path, groups: list) -> None:
    """Rewrite the split's records with a `group` each (a missing entry: no field)."""
    records = json.loads((root / "vqa_eval.json").read_text())
    for record, group in zip(records, groups, strict=True):
        if group is not ...:
            record["group"] = group
    (root / "vqa_eval.json").write_text(json.dumps(records))


# ---------------------------------------------------------------------------------------------------------
# Reading the field
# ---------------------------------------------------------------------------------------------------------


def test_the_reader_carries_each_records_group_to_its_cases(mmedit_dir):
    assert [r.group for r in read(mmedit_dir).records] == [None] * 4  # MMEdit itself has no groups
    with_groups(mmedit_dir, [SEEN, f" {UNSEEN} ", ..., SEEN])
    split = read(mmedit_dir)
    assert [r.group for r in split.records] == [SEEN, UNSEEN, None, SEEN]
    dataset = MMEditDataset(split, use_template=False)
    assert [dataset[i].group for i in range(4)] == dataset.record_groups == [SEEN, UNSEEN, None, SEEN]
    stream = CrossTaskDataset(dataset, MMEditDataset(split, use_template=False, limit=2), every=3)
    expected = [SEEN, UNSEEN, SEEN, None, SEEN, UNSEEN]  # two edits of the split, then one of the other
    assert stream.record_groups == [stream[i].group for i in range(len(stream))] == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3, "expected a string, found int"),
        (None, "expected a string, found NoneType"),
        (["seen"], "expected a string, found list"),
        ("  ", "empty"),
        ("seen/rule", "'seen/rule' contains '/'"),
    ],
)
def test_a_bad_group_names_file_record_and_field(mmedit_dir, value, message):
    with_groups(mmedit_dir, [..., ..., value, ...])
    with pytest.raises(MMEditFormatError) as error:
        read(mmedit_dir)
    assert str(error.value).startswith(f"{mmedit_dir / 'vqa_eval.json'}, record 2, field 'group': {message}")


# ---------------------------------------------------------------------------------------------------------
# Per-group metrics on hand-built records
# ---------------------------------------------------------------------------------------------------------


def hand_batch(groups: list, related: list[bool]) -> EditBatch:
    """The parts of a collated batch that grouping reads: each record's group and which records have
    related questions (hard neighbours: every record)."""
    neighbours = {
        names.RELATED: [{} if has else None for has in related],
        names.HARD_NEIGHBOURS: [{} for _ in groups],
    }
    return EditBatch(torch.arange(len(groups)), groups, {}, {}, neighbours)


def test_per_group_metrics_are_the_means_of_their_records():
    metrics = GroupedMetrics(build_editing_metrics(), "val/")
    assert metrics.set_groups([SEEN, UNSEEN])
    # Batch 1: records A (seen), B (unseen), C (seen, without related questions); batch 2: D (seen), E (none).
    batches = [
        (
            hand_batch([SEEN, UNSEEN, SEEN], [True, True, False]),
            {
                names.RELIABILITY: torch.tensor([1.0, 0.0, 0.5]),
                names.T_LOCALITY: torch.tensor([0.2, 0.4, 0.6]),
                names.RELATED_ACCURACY: torch.tensor([0.25, 1.0]),  # A and B only
                names.HARD_LOCALITY: torch.tensor([1.0, 0.5, 0.0]),
            },
        ),
        (
            hand_batch([SEEN, None], [True, True]),
            {
                names.RELIABILITY: torch.tensor([0.0, 1.0]),
                names.T_LOCALITY: torch.tensor([1.0, 0.0]),
                names.RELATED_ACCURACY: torch.tensor([0.75, 0.5]),
                names.HARD_LOCALITY: torch.tensor([0.5, 0.5]),
            },
        ),
    ]
    for batch, scores in batches:
        metrics.add(scores, batch.group, score_groups(batch, scores))
    logged = {name: float(metric.compute()) for name, metric in metrics.logged()}
    by_hand = {
        # all five records (E has no group: it counts here only)
        "val/reliability": (1 + 0 + 0.5 + 0 + 1) / 5,
        "val/t_locality": (0.2 + 0.4 + 0.6 + 1 + 0) / 5,
        "val/related_accuracy": (0.25 + 1 + 0.75 + 0.5) / 4,
        "val/hard_locality": (1 + 0.5 + 0 + 0.5 + 0.5) / 5,
        # seen-rule: A, C, D (C has no related questions)
        "val/seen-rule/reliability": (1 + 0.5 + 0) / 3,
        "val/seen-rule/t_locality": (0.2 + 0.6 + 1) / 3,
        "val/seen-rule/related_accuracy": (0.25 + 0.75) / 2,
        "val/seen-rule/hard_locality": (1 + 0 + 0.5) / 3,
        # unseen-rule: B
        "val/unseen-rule/reliability": 0.0,
        "val/unseen-rule/t_locality": 0.4,
        "val/unseen-rule/related_accuracy": 1.0,
        "val/unseen-rule/hard_locality": 0.5,
    }
    assert {k: v for k, v in logged.items() if not k.endswith("/records")} == pytest.approx(
        {key: value * 100 for key, value in by_hand.items()}
    )
    assert logged["val/seen-rule/records"] == 3 and logged["val/unseen-rule/records"] == 1
    assert not metrics.set_groups([SEEN, UNSEEN])  # the same groups: the metrics are kept


def test_scores_of_a_group_the_metrics_do_not_hold_are_refused():
    metrics = GroupedMetrics(build_editing_metrics(), "val/")
    metrics.set_groups([SEEN])
    batch = hand_batch([UNSEEN], [False])
    scores = {names.RELIABILITY: torch.tensor([1.0])}
    with pytest.raises(ValueError, match=r"group\(s\) \['unseen-rule'\] were scored"):
        metrics.add(scores, batch.group, score_groups(batch, scores))
    with pytest.raises(ValueError, match="distinct non-empty names"):
        metrics.set_groups([SEEN, SEEN])
    with pytest.raises(ValueError, match="'related_accuracy' has 1 entries for 0 scored records"):
        score_groups(batch, {names.RELATED_ACCURACY: torch.tensor([1.0])})  # the record has none


def test_data_without_groups_logs_the_scores_and_the_records_scored():
    metrics = GroupedMetrics(build_editing_metrics(), "val/")
    metrics.set_groups([])
    batch = hand_batch([None, None], [False, False])
    scores = {names.RELIABILITY: torch.tensor([1.0, 0.5])}
    metrics.add(scores, batch.group, score_groups(batch, scores))
    assert [(name, float(metric.compute())) for name, metric in metrics.logged()] == [
        ("val/reliability", 75.0),
        ("val/records", 2.0),
    ]


# ---------------------------------------------------------------------------------------------------------
# Result files and the printed table
# ---------------------------------------------------------------------------------------------------------

GROUPS = GroupScores(
    scores={
        SEEN: {"val/reliability": 90.0, "val/t_locality": 80.0},
        UNSEEN: {"val/reliability": 40.0, "val/t_locality": 70.0},
    },
    records={SEEN: 3, UNSEEN: 2},
)


def test_result_files_hold_the_scores_of_each_group(tmp_path):
    scores = {"val/reliability": 70.0, "val/t_locality": 76.0, "val/edit_seconds": 0.5}
    json_path, csv_path = write_results(tmp_path, "run", scores, SETTINGS, groups=GROUPS)
    data = read_results(json_path)
    assert data["scores"] == scores
    assert data["scores_by_group"] == GROUPS.scores and data["records_by_group"] == {SEEN: 3, UNSEEN: 2}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[:5] == [
        ["metric", "value", SEEN, UNSEEN],
        ["val/reliability", "70.0", "90.0", "40.0"],
        ["val/t_locality", "76.0", "80.0", "70.0"],
        ["val/edit_seconds", "0.5", "", ""],
        ["records", "", "3", "2"],
    ]
    assert ["setting:prompt_template", "none", "", ""] in rows
    plain = write_results(tmp_path, "plain", scores, SETTINGS)[0]
    assert set(read_results(plain)) == {"scores", "settings"}


def test_result_files_refuse_inconsistent_groups(tmp_path):
    scores = {"val/reliability": 70.0}
    uncounted = GroupScores({SEEN: {"val/reliability": 1.0}}, {})
    with pytest.raises(ValueError, match="differ from groups with record counts"):
        write_results(tmp_path, "run", scores, SETTINGS, groups=uncounted)
    extra = GroupScores({SEEN: {"val/t_locality": 1.0}}, {SEEN: 1})
    with pytest.raises(ValueError, match="that all records lack"):
        write_results(tmp_path, "run", scores, SETTINGS, groups=extra)
    with pytest.raises(ValueError, match="record count of 0"):
        write_results(tmp_path, "run", scores, SETTINGS, groups=GroupScores({SEEN: {}}, {SEEN: 0}))
    assert list(tmp_path.iterdir()) == []


def test_the_report_reads_group_scores_from_the_logged_metrics_and_prints_a_column_each():
    logged = {
        "val/reliability": torch.tensor(70.0),
        "val/seen-rule/reliability": torch.tensor(90.0),
        "val/seen-rule/records": torch.tensor(3.0),
        "val/unseen-rule/reliability": torch.tensor(40.0),
        "val/unseen-rule/records": torch.tensor(2.0),
        "val/routed_edit": torch.tensor(1.0),
    }
    groups = collect_group_scores(logged, "val")
    assert groups.scores == {SEEN: {"val/reliability": 90.0}, UNSEEN: {"val/reliability": 40.0}}
    assert groups.records == {SEEN: 3, UNSEEN: 2}
    assert collect_group_scores({"val/reliability": torch.tensor(70.0)}, "val") is None
    console = Console(record=True, width=120)
    console.print(scores_table("run", {"val/reliability": 70.0}, groups))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "metric" in line)
    assert header.index("all") < header.index(SEEN) < header.index(UNSEEN)
    assert any("Rel" in line and "70.00" in line and "90.00" in line and "40.00" in line for line in lines)


# ---------------------------------------------------------------------------------------------------------
# End to end: FT on a small world whose records carry groups, a resumed run, the comparison table
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grouped_world(tmp_path_factory, small_world) -> Path:
    """The small world's E-VQA eval split, its first 4 records labelled seen-rule / unseen-rule in turn
    (as world v2 labels them), written beside a link to the world's images."""
    root = tmp_path_factory.mktemp("grouped") / "world"
    (root / "vqa").mkdir(parents=True)
    records = json.loads((small_world / "vqa" / "vqa_eval.json").read_text())[:4]
    for i, record in enumerate(records):
        record["group"] = (SEEN, UNSEEN)[i % 2]
    (root / "vqa" / "vqa_eval.json").write_text(json.dumps(records))
    for folder in ("images", "images_rephrase"):
        (root / folder).symlink_to(small_world / folder)
    return root


def ft_config(root: Path, world: Path, model: Path) -> Path:
    """configs/edit_vqa.yaml with FT (2 steps) as the method, sequences of T = 2 edits (each batch mixes
    both groups) and no pre-edit cache."""
    settings = shipped_config("edit_vqa.yaml", root, world, model)
    backbone = settings["model"]["init_args"]["backbone"]
    settings["model"] = {
        "class_path": "unike_pl.modules.finetune.FineTuneModule",
        "init_args": {
            "backbone": backbone,
            "finetune": {"layers": 1, "max_steps": 2},
            "scoring": {"generation": True, "max_new_tokens": 2},
            "edits_dir": str(root / "edits"),
        },
    }
    settings["data"]["init_args"]["batch_size"] = 2
    return write_config(settings, root / "ft.yaml")


def test_an_editing_run_reports_each_group_and_a_resumed_run_reproduces_it(
    tmp_path, grouped_world, world_model, monkeypatch
):
    config = ft_config(tmp_path, grouped_world, world_model)
    main(["validate", "--config", str(config)])
    result_file = tmp_path / "results" / "edit" / "unike_vqa_val.json"
    first = read_results(result_file)
    assert first["records_by_group"] == {SEEN: 2, UNSEEN: 2}

    stored = [json.loads(f.read_text()) for f in sorted((tmp_path / "edits").glob("records_*.json"))]
    assert [edit["groups"] for edit in stored] == [[SEEN, UNSEEN], [SEEN, UNSEEN]]
    for group in (SEEN, UNSEEN):
        group_scores = first["scores_by_group"][group]
        for metric in (*names.TARGET_METRICS, *names.LOCALITY_METRICS, *names.NEIGHBOUR_METRICS):
            # every record of the world has related questions and hard neighbours: one score per record
            values = [
                score
                for edit in stored
                for score, owner in zip(edit["scores"][metric], edit["groups"], strict=True)
                if owner == group
            ]
            assert group_scores[names.stage_key("val", metric)] == pytest.approx(
                sum(values) / len(values) * 100, abs=1e-4
            )
        assert set(group_scores) == {names.stage_key("val", m) for m in names.EDIT_METRICS}
    rows = list(csv.reader((tmp_path / "results" / "edit" / "unike_vqa_val.csv").open()))
    assert rows[0] == ["metric", "value", SEEN, UNSEEN] and ["records", "4", "2", "2"] in rows
    assert first["records"] == 4 and first["settings"]["devices"] == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a finished edit was redone")

    monkeypatch.setattr(FineTuneEditor, "edit", refuse)
    main(["validate", "--config", str(config)])
    again = read_results(result_file)
    assert again["scores"] == first["scores"]
    assert again["scores_by_group"] == first["scores_by_group"]
    assert again["records_by_group"] == first["records_by_group"]


def test_a_stored_edit_of_other_groups_is_refused(tmp_path, grouped_world, world_model):
    from unike_pl.editing.store import EditResultStore
    from unike_pl.run_key import RunKey

    store = EditResultStore(tmp_path, RunKey({"method": "x"}))
    store.save([0, 1], [SEEN, UNSEEN], {names.RELIABILITY: torch.tensor([1.0, 0.0])}, [{}, {}])
    assert store.load([0, 1], [SEEN, UNSEEN])["groups"] == [SEEN, UNSEEN]
    with pytest.raises(ValueError, match=r"holds records of groups \['seen-rule', 'unseen-rule'\]"):
        store.load([0, 1], [UNSEEN, SEEN])


def test_the_unedited_reference_is_reported_per_group(tmp_path, tiny_models, mmedit_dir):
    with_groups(mmedit_dir, [SEEN, UNSEEN, SEEN, ...])
    config = shrink(Path("configs/pre_edit_vqa.yaml"), tmp_path, tiny_models["blip2"], mmedit_dir)
    main(["validate", "--config", str(config)])
    result = read_results(tmp_path / "results" / "pre_edit_vqa_val.json")
    assert result["records_by_group"] == {SEEN: 2, UNSEEN: 1}
    assert set(result["scores_by_group"][SEEN]) == set(result["scores"])


# ---------------------------------------------------------------------------------------------------------
# The comparison table
# ---------------------------------------------------------------------------------------------------------


def finished_run(tmp_path: Path, name: str, document: dict):
    from unike_pl.compare.plan import Run

    run = Run(name, "one-step", tmp_path / name, {}, None)
    run.result_file.parent.mkdir(parents=True)
    run.result_file.write_text(json.dumps(document))
    return run


def test_the_comparison_table_shows_the_figures_of_each_group(tmp_path):
    scores = {"val/reliability": 70.0, "val/related_accuracy": 50.0}
    grouped = finished_run(
        tmp_path,
        "FT",
        {
            "scores": scores,
            "settings": {},
            "scores_by_group": {
                UNSEEN: {"val/reliability": 40.0, "val/related_accuracy": 30.0},
                SEEN: {"val/reliability": 90.0, "val/related_accuracy": 70.0},
            },
            "records_by_group": {SEEN: 3, UNSEEN: 2},
        },
    )
    plain = finished_run(tmp_path, "IKE", {"scores": scores, "settings": {}})
    without_groups = markdown_table([run_row(plain)])
    rows = [run_row(grouped), run_row(plain)]
    markdown = markdown_table(rows).splitlines()
    assert markdown[0] == without_groups.splitlines()[0] + (
        " Rel (seen-rule) | Related (seen-rule) | Rel (unseen-rule) | Related (unseen-rule) |"
    )
    assert markdown[2].endswith("| 90.0 | 70.0 | 40.0 | 30.0 |")
    assert markdown[3] == without_groups.splitlines()[2] + " – | – | – | – |"
    table = list(csv.DictReader(csv_table(rows).splitlines()))
    assert table[0][f"{SEEN}/reliability"] == "90.0" and table[1][f"{SEEN}/reliability"] == ""
    assert csv_table([run_row(plain)]).splitlines()[0].endswith("edit_steps,run_minutes")
