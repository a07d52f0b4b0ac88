"""MMEdit files: the real fields are read, bad input is named by file, record and field."""

from __future__ import annotations

import json

import pytest

from tests.conftest import mmedit_record
from unike_pl.backbones import BackboneConfig, load_encoder
from unike_pl.data import EditCollator, MMEditDataset, MMEditFormatError, MMEditWarning, read_mmedit
from unike_pl.metrics import names


def read(root, file="vqa_eval.json", task="vqa"):
    return read_mmedit(root / file, task, root / "coco", root / "rephrase")


def rewrite(root, mutate):
    records = json.loads((root / "vqa_eval.json").read_text())
    mutate(records)
    (root / "vqa_eval.json").write_text(json.dumps(records))


def test_reads_every_field(mmedit_dir):
    split = read(mmedit_dir)
    assert len(split.records) == 4 and split.skipped_empty_alt == 0
    record = split.records[1]
    assert (record.src, record.alt, record.pred) == ("what color is the circle?", "blue", "red")
    assert record.image == mmedit_dir / "coco" / "val2014" / "img_1.png"
    assert record.image_rephrase == mmedit_dir / "rephrase" / "img_1_r.png"
    assert record.m_loc == mmedit_dir / "coco" / "val2014" / "loc_1.png"
    assert (record.loc_ans, record.m_loc_q, record.m_loc_a) == ("mirth", "how many squares are there?", "two")


def test_missing_file(mmedit_dir):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        read(mmedit_dir, "nope.json")


def test_non_json_file(mmedit_dir):
    (mmedit_dir / "vqa_eval.json").write_text('[{"src": "x",')
    with pytest.raises(MMEditFormatError, match=r"vqa_eval.json: not valid JSON \(.* line 1"):
        read(mmedit_dir)


def test_not_a_list(mmedit_dir):
    (mmedit_dir / "vqa_eval.json").write_text('{"src": "x"}')
    with pytest.raises(MMEditFormatError, match="expected a JSON list of records, found a dict"):
        read(mmedit_dir)


def test_missing_field_names_file_record_and_field(mmedit_dir):
    rewrite(mmedit_dir, lambda records: records[2].pop("m_loc_q"))
    with pytest.raises(MMEditFormatError) as error:
        read(mmedit_dir)
    assert str(error.value) == f"{mmedit_dir / 'vqa_eval.json'}, record 2, field 'm_loc_q': missing"
    assert (error.value.record, error.value.field) == (2, "m_loc_q")


def test_wrong_type_and_empty_text(mmedit_dir):
    rewrite(mmedit_dir, lambda records: records[0].update(rephrase=["a", "b"]))
    with pytest.raises(MMEditFormatError, match="record 0, field 'rephrase': expected a string, found list"):
        read(mmedit_dir)
    rewrite(mmedit_dir, lambda records: records[0].update(rephrase="x", loc_ans="  "))
    with pytest.raises(MMEditFormatError, match="record 0, field 'loc_ans': empty"):
        read(mmedit_dir)


def test_record_not_an_object(mmedit_dir):
    rewrite(mmedit_dir, lambda records: records.append("oops"))
    with pytest.raises(MMEditFormatError, match="record 4: expected a JSON object, found str"):
        read(mmedit_dir)


def test_missing_image(mmedit_dir):
    (mmedit_dir / "rephrase" / "img_3_r.png").unlink()
    with pytest.raises(
        MMEditFormatError, match=r"record 3, field 'image_rephrase': image .*img_3_r.png does not"
    ):
        read(mmedit_dir)


@pytest.mark.parametrize("outside", ["../rephrase/img_2_r.png", "ABSOLUTE"])
def test_an_image_path_leaving_its_root_is_refused_unless_allowed(mmedit_dir, outside):
    """`../x` and absolute paths would read files outside the configured roots: named, or read when
    `allow_outside_roots` says so."""
    path = str(mmedit_dir / "rephrase" / "img_2_r.png") if outside == "ABSOLUTE" else outside
    rewrite(mmedit_dir, lambda records: records[2].update(image=path))
    with pytest.raises(
        MMEditFormatError, match=r"record 2, field 'image': image path .* leads outside its root"
    ):
        read(mmedit_dir)
    split = read_mmedit(
        mmedit_dir / "vqa_eval.json",
        "vqa",
        mmedit_dir / "coco",
        mmedit_dir / "rephrase",
        allow_outside_roots=True,
    )
    assert split.records[2].image.resolve() == (mmedit_dir / "rephrase" / "img_2_r.png").resolve()


def test_unreadable_image_is_named_when_loaded(mmedit_dir):
    (mmedit_dir / "coco" / "val2014" / "loc_1.png").write_text("not a png")
    dataset = MMEditDataset(read(mmedit_dir), use_template=False)
    with pytest.raises(MMEditFormatError, match="record 1, field 'm_loc': cannot read image"):
        dataset[1]


def test_empty_alt_is_skipped_with_a_count(mmedit_dir):
    rewrite(mmedit_dir, lambda records: [r.update(alt="") for r in records[:2]])
    with pytest.warns(MMEditWarning, match="skipped 2 of 4 records with an empty 'alt'"):
        split = read(mmedit_dir)
    assert [r.index for r in split.records] == [2, 3] and split.skipped_empty_alt == 2


def test_all_records_skipped_is_an_error(mmedit_dir):
    rewrite(mmedit_dir, lambda records: [r.update(alt="") for r in records])
    with pytest.warns(MMEditWarning), pytest.raises(MMEditFormatError, match="no usable records"):
        read(mmedit_dir)


def test_poor_locality_pool_warns(mmedit_dir):
    rewrite(mmedit_dir, lambda records: [r.update(loc="nq question: same?") for r in records])
    with pytest.warns(MMEditWarning, match="only 1 distinct 'loc' questions"):
        read(mmedit_dir)


def test_extra_world_fields_are_checked(mmedit_dir):
    rewrite(mmedit_dir, lambda records: records[1].update(related=[{"q": "is it blue?"}]))
    with pytest.raises(
        MMEditFormatError, match="record 1, field 'related': entry 0 needs a non-empty string 'a'"
    ):
        read(mmedit_dir)
    rewrite(
        mmedit_dir,
        lambda records: records[1].update(
            related=[{"q": "is it blue?", "a": "yes"}],
            hard_loc=[
                {
                    "image": "val2014/loc_0.png",
                    "q": "how many?",
                    "a": "two",
                    "kind": "same_image_other_question",
                }
            ],
        ),
    )
    record = read(mmedit_dir).records[1]
    assert record.related[0].answer == "yes" and record.hard_loc[0].kind == "same_image_other_question"


def test_cases_and_template(mmedit_dir):
    split = read(mmedit_dir)
    plain = MMEditDataset(split, use_template=False)[0].cases
    wrapped = MMEditDataset(split, use_template=True)[0].cases
    assert set(plain) == set(names.CASES)
    assert plain[names.EDIT].prompt == "what color is the circle?"
    assert wrapped[names.EDIT].prompt == "Question: what color is the circle? Short answer:"
    assert wrapped[names.REPHRASE].prompt == "Question: what colour are the objects? Short answer:"
    assert wrapped[names.MULTIMODAL_LOCALITY].prompt == "Question: how many squares are there? Short answer:"
    assert (
        wrapped[names.TEXT_LOCALITY].prompt == plain[names.TEXT_LOCALITY].prompt
    )  # NQ text is never wrapped
    assert wrapped[names.TEXT_LOCALITY].image is None
    assert plain[names.IMAGE_REPHRASE].image.size == (48, 48) and plain[names.EDIT].image.size == (40, 40)
    assert plain[names.EDIT].target == plain[names.IMAGE_REPHRASE].target == "red"


def test_caption_prompts_are_never_wrapped(mmedit_dir):
    rewrite(
        mmedit_dir, lambda records: [r.update(src="a photo of", rephrase="a picture of") for r in records]
    )
    cases = MMEditDataset(read(mmedit_dir, task="caption"), use_template=True)[0].cases
    assert cases[names.EDIT].prompt == "a photo of"
    assert cases[names.MULTIMODAL_LOCALITY].prompt.startswith("Question: ")


def test_collate_builds_five_batches(mmedit_dir, tiny_models):
    encoder = load_encoder(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))
    dataset = MMEditDataset(read(mmedit_dir), use_template=False)
    batch = EditCollator(encoder)([dataset[0], dataset[3]])
    assert batch.record.tolist() == [0, 3]
    assert set(batch.cases) == set(names.CASES)
    assert "pixel_values" not in batch.cases[names.TEXT_LOCALITY]
    for case in names.CASES:
        encoded = batch.cases[case]
        assert encoded["input_ids"].shape == encoded["labels"].shape
        assert ((encoded["labels"] != -100).sum(-1) > 0).all()
    assert batch.targets[names.EDIT] == ["red", "purple"]


def test_unknown_task(mmedit_dir):
    with pytest.raises(ValueError, match="task must be one of"):
        read(mmedit_dir, task="audio")


def test_record_helper_has_every_mmedit_field():
    from unike_pl.mmedit_fields import MMEDIT_FIELDS

    assert set(mmedit_record(0, "red")) == set(MMEDIT_FIELDS)


def test_cross_task_stream_mixes_one_in_three():
    from unike_pl.data.cases import CrossTaskDataset, EditSample

    vqa = [EditSample(i, {"task": "vqa", "index": i}, {}) for i in range(5)]
    captions = [EditSample(i, {"task": "caption", "index": i}, {}) for i in range(10)]
    stream = CrossTaskDataset(vqa, captions, every=3)
    order = [(stream[i].cases["task"], stream[i].cases["index"]) for i in range(len(stream))]
    assert order[:6] == [("vqa", 0), ("vqa", 1), ("caption", 0), ("vqa", 2), ("vqa", 3), ("caption", 1)]
    assert len(stream) == 7 and [stream[i].record for i in range(7)] == list(range(7))
    with pytest.raises(ValueError, match="every"):
        CrossTaskDataset(vqa, captions, every=1)


@pytest.mark.parametrize(("task", "template"), [("vqa", False), ("vqa", True), ("caption", True)])
def test_one_case_of_a_record_is_the_case_of_the_whole_sample(mmedit_dir, task, template):
    """Memory questions are built one case at a time (reading only that case's image): the same example
    as the full sample's."""
    dataset = MMEditDataset(read(mmedit_dir, task=task), use_template=template)
    for position in range(len(dataset)):
        whole = dataset[position].cases
        for case in names.CASES:
            one = dataset.case(position, case)
            assert (one.prompt, one.target) == (whole[case].prompt, whole[case].target)
            assert (one.image is None) == (whole[case].image is None)
            if one.image is not None:
                assert one.image.tobytes() == whole[case].image.tobytes()
