"""EditingModule: UniKE (and its ablations) run edit by edit inside Lightning's validate/test loops."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import select_record
from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.latent import KnowledgeInjection, LatentConfig, LayerKnowledge
from unike_pl.editing.store import EditResultStore, as_tensors
from unike_pl.knowledge.datamodule import MemoryConfig, load_memory
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.metrics import names
from unike_pl.metrics.editing import SampleMean, build_editing_metrics
from unike_pl.modules.backbone_module import BackboneModule
from unike_pl.scoring import (
    Scores,
    ScoringConfig,
    add_scores,
    locality_scores_after_edit,
    pre_edit_predictions,
    target_scores,
)

STAGES = ("val", "test")


class EditingModule(BackboneModule):
    """`validate`/`test` over an MMEdit split: each batch is one edit (batch_size 1, one-step editing) or
    a sequence of T edits applied one after another and scored together (batch_size T, sequential).

    Load trained encoders with `--ckpt_path` (a DisentangleModule checkpoint): UniKE's collaboration
    (β > 0 or α from the semantic encoder) refuses to run without them. Configs must set
    `trainer.inference_mode: false`, since edits are trained inside the validation loop.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        memory: MemoryConfig,
        intrinsic: IntrinsicConfig | None = None,
        latent: LatentConfig | None = None,
        encoder_dim: int = 64,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        fast_tail: bool = True,
        memory_sample: int = 2000,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the model to edit.
            memory: the knowledge memory (built by `fit --config configs/disentangle.yaml`); its
                `edited_layers` are the layers every edit touches.
            intrinsic: extra FFN neurons per edit; None turns intrinsic editing off.
            latent: knowledge injected into self-attention; None turns it off.
            encoder_dim: size of the encoders' spaces (as in the DisentangleModule checkpoint).
            scoring: scorer settings (METHOD.md §3).
            edits_dir: folder of per-edit results; a rerun reads finished edits back. None keeps nothing.
            fast_tail: compute the frozen prefix once per edit and train through the edited layers only;
                False runs the full model at every step (same results, slower).
            memory_sample: unrelated FFN inputs (from the memory) that the new neurons must stay silent on.
            seed: seed of the neurons' key jitter.
        """
        super().__init__(backbone)
        self.save_hyperparameters()
        self.memory_config = memory
        self.intrinsic = intrinsic
        self.latent = latent
        self.scoring = scoring or ScoringConfig()
        self.encoders: DisentangledEncoders | None = None
        self.editor: UniKEEditor | None = None
        self.store: EditResultStore | None = None
        metrics = build_editing_metrics(
            self.scoring.target_scorer, self.scoring.locality_scorer, self.scoring.generation
        )
        self.metrics = nn.ModuleDict({stage: metrics.clone(prefix=f"{stage}/") for stage in STAGES})
        immediate = MetricCollection(
            {key: SampleMean() for key in names.TARGET_METRICS}, compute_groups=False
        )
        self.immediate = nn.ModuleDict(
            {stage: immediate.clone(prefix=f"{stage}/immediate_") for stage in STAGES}
        )
        self.cost = nn.ModuleDict(
            {stage: nn.ModuleDict({key: MeanMetric() for key in names.COST_METRICS}) for stage in STAGES}
        )

    @property
    def needs_encoders(self) -> bool:
        return (self.intrinsic is not None and self.intrinsic.beta > 0) or (
            self.latent is not None and self.latent.alpha is None
        )

    def configure_model(self) -> None:
        super().configure_model()
        if self.encoders is None:
            layers = self.mllm.last_layers(self.memory_config.edited_layers)
            self.encoders = DisentangledEncoders(layers, self.mllm.hidden_size, self.hparams.encoder_dim)
            self.encoders.requires_grad_(False)  # trained by the DisentangleModule, fixed while editing

    def _build_editor(self) -> UniKEEditor:
        if self.needs_encoders and not bool(self.encoders.zeta.any()):
            raise ValueError(
                "this method uses the trained encoders (β·ζ' or α from Enc_Sem): pass a DisentangleModule "
                "checkpoint with --ckpt_path (train one with `fit --config configs/disentangle.yaml`)"
            )
        memory = load_memory(self.backbone_config, self.memory_config)
        layers = memory.layers
        injection = None
        if self.latent is not None:
            knowledge = {
                layer: LayerKnowledge(memory.states[layer]["sem"], memory.states[layer]["pos"])
                for layer in layers
            }
            alpha = self.encoders.relevance if self.latent.alpha is None else self.latent.alpha
            injection = KnowledgeInjection(self.mllm, knowledge, self.latent.top_k, alpha)
        sample = torch.randperm(len(memory), generator=torch.Generator().manual_seed(self.hparams.seed))
        sample = sample[: self.hparams.memory_sample]
        ffn_memory = {layer: memory.states[layer]["ffn"][sample] for layer in layers}
        return UniKEEditor(
            self.mllm,
            layers,
            self.intrinsic,
            injection,
            self.encoders if self.needs_encoders else None,
            ffn_memory,
            fast_tail=self.hparams.fast_tail,
            seed=self.hparams.seed,
        )

    def _start(self) -> None:
        self.editor = self._build_editor()
        if self.hparams.edits_dir is not None:
            settings = {**self.result_settings(), **self.trainer.datamodule.result_settings()}
            self.store = EditResultStore(self.hparams.edits_dir, settings)

    def on_validation_start(self) -> None:
        self._start()

    def on_test_start(self) -> None:
        self._start()

    def _edit_batch(self, batch: dict[str, Any]) -> tuple[Scores, Scores, list[dict[str, Any]]]:
        """Apply the batch's edits in order, score each right after it and all of them at the end."""
        editor, encoder = self.editor, self.mllm.encoder
        pre_topk = pre_edit_predictions(self.mllm, batch["cases"])
        immediate: dict[str, list[torch.Tensor]] = {key: [] for key in names.TARGET_METRICS}
        reports = []
        try:
            for index in range(len(batch["record"])):
                single = select_record(batch, index, encoder)
                report = editor.edit(single["cases"][names.EDIT])
                reports.append(vars(report))
                if len(batch["record"]) > 1:
                    with editor.active():
                        scores = target_scores(self.mllm, single, replace(self.scoring, generation=False))
                    for key in names.TARGET_METRICS:
                        immediate[key].append(scores[key])
            with editor.active():
                final = target_scores(self.mllm, batch, self.scoring)
                final.update(locality_scores_after_edit(self.mllm, batch, self.scoring, pre_topk))
        finally:
            editor.restore()
        return final, {k: torch.cat(v) for k, v in immediate.items() if v}, reports

    def _step(self, batch: dict[str, Any], stage: str) -> None:
        records = batch["record"].tolist()
        stored = self.store.load(records) if self.store is not None else None
        if stored is None:
            final, immediate, reports = self._edit_batch(batch)
            if self.store is not None:
                self.store.save(records, final, reports, immediate)
        else:
            final, immediate, reports = (
                as_tensors(stored["scores"]),
                as_tensors(stored["immediate"]),
                stored["edits"],
            )
        add_scores(self.metrics[stage], final)
        add_scores(self.immediate[stage], immediate)
        for report in reports:
            self.cost[stage][names.EDIT_SECONDS].update(report["seconds"])
            self.cost[stage][names.EDIT_STEPS].update(report["steps"])
        self.log_dict(self.metrics[stage], batch_size=len(records))
        if immediate:
            self.log_dict(self.immediate[stage], batch_size=len(records))
        for key, metric in self.cost[stage].items():
            self.log(f"{stage}/{key}", metric, batch_size=len(records))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def result_settings(self) -> dict[str, Any]:
        return {
            **super().result_settings(),
            **self.scoring.settings(),
            "intrinsic": vars(self.intrinsic) if self.intrinsic else None,
            "latent": vars(self.latent) if self.latent else None,
            "edited_layers": self.memory_config.edited_layers,
            "fast_tail": self.hparams.fast_tail,
        }
