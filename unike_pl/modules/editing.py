"""EditingModule: UniKE, its ablations and the in-context baselines, edit by edit in Lightning's loops."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.fingerprint import file_digest
from unike_pl.data.mmedit import under_root
from unike_pl.editing.context import ContextConfig, build_knowledge
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.latent import FixedGate, KnowledgeInjection, LatentConfig, LayerKnowledge, SemanticGate
from unike_pl.editing.unrelated import UnrelatedInputs
from unike_pl.errors import UserError
from unike_pl.knowledge.cache import MemoryConfig, memory_path, run_memory
from unike_pl.knowledge.datamodule import TripletExamples
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.memory import KnowledgeMemory
from unike_pl.ldke.localization import LocalizationConfig, locate
from unike_pl.modules.edit_loop import EditingLoop
from unike_pl.scoring import ScoringConfig


class EditingModule(EditingLoop):
    """UniKE and every method made of its parts (T-Patcher, intrinsic only, IKE, latent IKE, their
    combinations): see `unike_pl.editing.editor` for which settings make which method.

    Load trained encoders with `--ckpt_path` (a DisentangleModule checkpoint): UniKE's collaboration
    (β > 0 or α from the semantic encoder) refuses to run without them.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        memory: MemoryConfig,
        intrinsic: IntrinsicConfig | None = None,
        latent: LatentConfig | None = None,
        in_context: ContextConfig | None = None,
        encoder_dim: int = 64,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        fast_tail: bool = True,
        memory_sample: int = 2000,
        seed: int = 0,
        localization: LocalizationConfig | None = None,
    ) -> None:
        """
        Args:
            backbone: the model to edit.
            memory: the knowledge memory (built by `fit --config configs/disentangle.yaml`); its
                `edited_layers` are the layers every edit touches.
            intrinsic: extra FFN neurons per edit; None turns intrinsic editing off.
            latent: knowledge injected into self-attention; None turns it off.
            in_context: vanilla IKE: k training demonstrations, retrieved once per edit by its new fact,
                and the new fact written before every input of the edit; None: off.
            encoder_dim: size of the encoders' spaces (as in the DisentangleModule checkpoint).
            scoring: scorer settings (METHOD.md §3).
            edits_dir: folder of per-edit results; a rerun reads finished edits back. None keeps nothing.
            fast_tail: compute the frozen prefix once per edit and train through the edited layers only;
                False runs the full model at every step (same results, slower).
            memory_sample: memory questions whose FFN inputs the new neurons must stay silent on (re-read
                with the edits applied where the latent knowledge reaches them).
            seed: seed of the memory sample, the neurons' key jitter and the random-ζ control.
            localization: LDKE's fast localization: each edit's neurons go into the `localization.layers`
                edited layers that carry its fact; None puts them into every edited layer.
        """
        super().__init__(backbone, scoring, edits_dir, seed)
        self.save_hyperparameters()
        self.memory_setting, self.in_context_setting = memory, in_context  # as given: paths in the data root
        self.memory_config = memory
        self.intrinsic = intrinsic
        self.latent = latent
        self.in_context = in_context
        self.localization = localization
        self.encoders: DisentangledEncoders | None = None

    @property
    def needs_encoders(self) -> bool:
        return (self.intrinsic is not None and self.intrinsic.beta > 0) or (
            self.latent is not None and self.latent.alpha is None
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # The memory's sources and IKE's demonstrations are dataset files: inside the data's root.
        root = getattr(self.trainer.datamodule, "root", ".")
        self.memory_config = self.memory_setting.under(root)
        given = self.in_context_setting
        if given is not None and given.demonstrations_file is not None:
            self.in_context = replace(given, demonstrations_file=under_root(root, given.demonstrations_file))

    def configure_model(self) -> None:
        super().configure_model()
        if self.encoders is None:
            layers = self.mllm.last_layers(self.memory_config.edited_layers)
            self.encoders = DisentangledEncoders(layers, self.mllm.hidden_size, self.hparams.encoder_dim)
            self.encoders.requires_grad_(False)  # trained by the DisentangleModule, fixed while editing

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        weights = checkpoint.get("state_dict", {})
        has_encoders = any(key.startswith("encoders.") for key in weights)
        missing = [key for key in ("encoders.zeta_map", "encoders.gate_threshold") if key not in weights]
        if has_encoders and missing:
            raise UserError(
                f"the encoders checkpoint lacks {', '.join(missing)}: it was written before W_ζ and the "
                "gate threshold were fitted in disentangling; refit it with "
                "`fit --config configs/disentangle.yaml` (the memory cache is reused)"
            )

    def edited_layers(self) -> tuple[list[int], list[int]]:
        """Where this method edits, decided here only: the layers of the latent knowledge (the memory's
        `edited_layers` last layers) and, among them, the layers that get new neurons (the last
        `intrinsic.layers` of those; LDKE's localization then picks per edit among these)."""
        layers = self.mllm.last_layers(self.memory_config.edited_layers)
        count = self.intrinsic.layers if self.intrinsic is not None else None
        return layers, layers[-count:] if count else layers

    def build_editor(self) -> UniKEEditor:
        if self.needs_encoders and not self.encoders.trained:
            raise UserError(
                "this method uses the trained encoders (β·ζ' or α from Enc_Sem): pass a DisentangleModule "
                "checkpoint with --ckpt_path (train one with `fit --config configs/disentangle.yaml`)"
            )
        in_context = build_knowledge(self.in_context) if self.in_context is not None else None
        layers, neuron_layers = self.edited_layers()
        if self.intrinsic is None and self.latent is None:  # in-context knowledge needs no memory
            return UniKEEditor(self.mllm, layers, None, None, None, None, in_context=in_context)
        memory = run_memory(self.trainer, self.backbone_config, self.mllm, self.memory_config)
        injection = None
        if self.latent is not None:
            knowledge = {
                layer: LayerKnowledge(memory.states[layer]["sem"], memory.states[layer]["pos"])
                for layer in layers
            }
            gate = (
                SemanticGate(self.encoders, self.latent.gate_threshold, self.latent.gate_value)
                if self.latent.alpha is None
                else FixedGate(self.latent.alpha)
            )
            injection = KnowledgeInjection(
                self.mllm, knowledge, self.latent.top_k, gate, self.memory_config.index
            )
        choose_layers = None
        if self.localization is not None:
            choose_layers = partial(locate, config=self.localization)
        return UniKEEditor(
            self.mllm,
            layers,
            self.intrinsic,
            injection,
            self.encoders if self.needs_encoders else None,
            self.unrelated_inputs(memory, layers) if self.intrinsic is not None else None,
            fast_tail=self.hparams.fast_tail,
            seed=self.seed,
            in_context=in_context,
            neuron_layers=neuron_layers,
            choose_layers=choose_layers,
        )

    def unrelated_inputs(self, memory: KnowledgeMemory, layers: list[int]) -> UnrelatedInputs:
        """A seeded sample of `memory_sample` memory questions: what the new neurons must stay silent on."""
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(len(memory), generator=generator)[: self.hparams.memory_sample]
        states = {
            kind: {layer: memory.states[layer][kind][rows] for layer in layers} for kind in ("sem", "ffn")
        }
        examples = TripletExamples(self.memory_config, [memory.triplets[int(row)] for row in rows])
        return UnrelatedInputs(self.mllm, states["sem"], states["ffn"], examples)

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return self.encoders.state_dict() if self.needs_encoders else {}

    def input_fingerprints(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        if self.intrinsic is not None or self.latent is not None:
            inputs["memory"] = memory_path(self.backbone_config, self.memory_config).parent.name
        if self.in_context is not None and self.in_context.demonstrations_file is not None:
            inputs["demonstrations"] = file_digest(self.in_context.demonstrations_file)
        return inputs

    def method_settings(self) -> dict[str, Any]:
        return {
            "intrinsic": vars(self.intrinsic) if self.intrinsic else None,
            "latent": vars(self.latent) if self.latent else None,
            "in_context": vars(self.in_context) if self.in_context else None,
            "edited_layers": self.memory_config.edited_layers,
            "fast_tail": self.hparams.fast_tail,
            **({"localization": vars(self.localization)} if self.localization else {}),
        }
