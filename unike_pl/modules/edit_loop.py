"""The editing loop shared by every method: edits applied and scored inside Lightning's validate/test."""

from __future__ import annotations

import hashlib
import inspect
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric

from unike_pl.backbones.fingerprint import backbone_fingerprint
from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import EditBatch
from unike_pl.editing.base import Editor
from unike_pl.editing.store import EditResultStore, as_tensors
from unike_pl.folder_lock import FolderLock
from unike_pl.metrics import names
from unike_pl.metrics.editing import SampleMean, build_editing_metrics
from unike_pl.metrics.gate import GateReadings, GateSummary, gate_readings
from unike_pl.metrics.groups import GroupedMetrics, add_scores
from unike_pl.modules.backbone_module import BackboneModule, set_record_groups
from unike_pl.pre_edit_cache import PreEditCache
from unike_pl.run_key import RunKey, plain
from unike_pl.scoring import (
    PRE_EDIT_TOP_K,
    PreEdit,
    Scores,
    ScoringConfig,
    locality_scores_after_edit,
    neighbour_scores,
    pre_edit_predictions,
    score_groups,
    target_scores,
)

STAGES = ("val", "test")

RESULT_INDEPENDENT = (
    "edits_dir",
    "scoring.pre_edit_cache",
    "scoring.allow_non_finite",
    "memory.cache_dir",
    "memory.chunk_records",
    "num_workers",
    "limit",
)
"""Settings left out of the run key: where results and caches go, speed, and whether diverged edits
fail the run; `limit` only shortens the list of records (each record's result is stored on its own)."""

KEYED_BY_CONTENT = (
    "backbone.name_or_path",
    "root",
    "eval_file",
    "cross_task_file",
    "train_file",
    "image_root",
    "rephrase_image_root",
    "in_context.demonstrations_file",
    "router_checkpoint",
)
"""Paths whose contents the run key hashes (the model's files, the data and its images, the
demonstrations, the trained weights): the same files in another place give the same key."""


class EditingLoop(BackboneModule):
    """`validate`/`test` over an MMEdit split: each batch is one edit (batch_size 1, one-step editing) or
    a sequence of T edits applied one after another and scored together (batch_size T, sequential).

    A method subclasses this and builds its `Editor` in `build_editor`. Configs must set
    `trainer.inference_mode: false`, since most methods optimise inside the validation loop.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone)
        self.scoring = scoring or ScoringConfig()
        self.edits_dir = edits_dir
        self.seed = seed
        self.editor: Editor | None = None
        self.key: RunKey | None = None
        self.store: EditResultStore | None = None
        self.lock: FolderLock | None = None
        self.pre_edit_cache: PreEditCache | None = None
        metrics = build_editing_metrics(
            self.scoring.target_scorer, self.scoring.locality_scorer, self.scoring.generation
        )
        self.metrics = nn.ModuleDict({stage: GroupedMetrics(metrics, f"{stage}/") for stage in STAGES})
        immediate = MetricCollection(
            {key: SampleMean() for key in names.TARGET_METRICS}, compute_groups=False
        )
        self.immediate = nn.ModuleDict(
            {stage: immediate.clone(prefix=f"{stage}/immediate_") for stage in STAGES}
        )
        self.gate = GateSummary()
        self.cost = nn.ModuleDict(
            {stage: nn.ModuleDict({key: MeanMetric() for key in names.COST_METRICS}) for stage in STAGES}
        )
        self.non_finite = nn.ModuleDict({stage: SumMetric() for stage in STAGES})

    @abstractmethod
    def build_editor(self) -> Editor:
        """The method's editor over `self.mllm`, built when validate/test starts."""

    @abstractmethod
    def method_settings(self) -> dict[str, Any]:
        """The method's settings, recorded beside every score."""

    def trained_weights(self) -> dict[str, torch.Tensor]:
        """The trained weights the method edits with (part of the run key); none by default."""
        return {}

    def input_fingerprints(self) -> dict[str, Any]:
        """Hashes of what the method reads besides the model and the eval data (its knowledge memory,
        its demonstrations), part of the run key; none by default."""
        return {}

    def run_key(self) -> RunKey:
        """Everything the scores of this run depend on: the model's files, the trained weights, the
        method's other inputs, the eval data's files and images, every other setting (all but
        `RESULT_INDEPENDENT` and the paths in `KEYED_BY_CONTENT`) and the precision."""
        missing = [
            name
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if name != "self"
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            and name not in self.hparams
        ]
        if missing:  # a subclass that forgot save_hyperparameters() would key on its parent's settings
            raise RuntimeError(f"{type(self).__name__} saved no hyperparameters {missing}")
        datamodule = self.trainer.datamodule
        weights = self.trained_weights()
        return RunKey(
            {
                "model": backbone_fingerprint(self.backbone_config),
                "weights": weights_fingerprint(weights) if weights else None,
                "inputs": self.input_fingerprints(),
                "data": datamodule.fingerprint(),
                "method": plain(self.hparams, RESULT_INDEPENDENT + KEYED_BY_CONTENT),
                "data_settings": plain(datamodule.hparams, RESULT_INDEPENDENT + KEYED_BY_CONTENT),
                "precision": str(self.trainer.precision),
            }
        )

    def setup(self, stage: str) -> None:
        set_record_groups(self, self.metrics.values())

    def _start(self) -> None:
        self.editor = self.build_editor()
        self.gate.reset()
        self.key = self.run_key()
        self.store = None
        if self.edits_dir is not None:
            if self.trainer.is_global_zero:  # one lock per run: the processes of a run share the folder
                self.lock = FolderLock(self.edits_dir)
                self.lock.acquire()
                self.store = EditResultStore(self.edits_dir, self.key)  # writes the key the others check
            self.trainer.strategy.barrier("edits folder claimed")
            if self.store is None:
                self.store = EditResultStore(self.edits_dir, self.key)
        if self.scoring.pre_edit_cache is not None:
            key = {
                "model": self.key.parts["model"],
                "data": self.key.parts["data"],
                "data_settings": self.trainer.datamodule.result_settings(),
                "top_k": PRE_EDIT_TOP_K,
                "cases": [*names.LOCALITY_CASES, names.HARD_NEIGHBOURS],
            }
            self.pre_edit_cache = PreEditCache(self.scoring.pre_edit_cache, key)

    def _finish(self, stage: str) -> None:
        if self.lock is not None:
            self.lock.release()
        self._check_finite(stage)

    def _pre_edit(self, batch: EditBatch) -> PreEdit:
        """The unedited model's top-k ids on the batch's locality inputs, from the cache when it has them."""
        compute = lambda: pre_edit_predictions(self.mllm, batch)  # noqa: E731
        if self.pre_edit_cache is None:
            return compute()
        return self.pre_edit_cache.predictions(batch.record.tolist(), compute)

    def on_validation_start(self) -> None:
        self._start()

    def on_test_start(self) -> None:
        self._start()

    def _check_finite(self, stage: str) -> None:
        """After the results are written (callbacks run first): fail a run with diverged edits."""
        diverged = int(self.trainer.callback_metrics.get(f"{stage}/{names.NON_FINITE_EDITS}", 0))
        if diverged and not self.scoring.allow_non_finite:
            raise RuntimeError(
                f'{diverged} edit(s) gave non-finite logits (marked "finite": false in their edit files): '
                "their scores mean nothing. Lower the learning rate, or set scoring.allow_non_finite"
            )

    def on_validation_end(self) -> None:
        self._finish("val")

    def on_test_end(self) -> None:
        self._finish("test")

    def _logged(self, stage: str) -> Iterator[tuple[str, Metric]]:
        """(logged name, metric) of everything the loop logs for `stage` that has scored something: the
        editing metrics of all records and of each group, the scores right after each edit (sequential
        editing), the cost per edit and the count of diverged edits."""
        yield from self.metrics[stage].logged()
        others = {
            **dict(self.immediate[stage].items()),
            **{f"{stage}/{key}": metric for key, metric in self.cost[stage].items()},
            f"{stage}/{names.NON_FINITE_EDITS}": self.non_finite[stage],
        }
        for name, metric in others.items():
            if metric.update_count:
                yield name, metric

    def scores_so_far(self, stage: str) -> dict[str, torch.Tensor]:
        """The scores of the records edited so far, keyed as logged (for the results of a stopped run)."""
        return {name: metric.compute() for name, metric in self._logged(stage)}

    def result_diagnostics(self) -> dict[str, Any]:
        """What the result files record beside the scores: the mean α per case and layer."""
        gate = self.gate.compute()
        return {"gate_alpha": gate} if gate else {}

    def _edit_batch(
        self, batch: EditBatch
    ) -> tuple[Scores, Scores, list[dict[str, Any]], GateReadings | None]:
        """Apply the batch's edits in order, score each right after it and all of them at the end (with
        what the gate let into each case, for methods that have one)."""
        editor, encoder = self.editor, self.mllm.encoder
        pre_topk = self._pre_edit(batch)  # before any edit of the batch
        immediate: dict[str, list[torch.Tensor]] = {key: [] for key in names.TARGET_METRICS}
        reports = []
        try:
            for index in range(len(batch)):
                single = batch.select(index, encoder)
                report = editor.edit(single.cases[names.EDIT])
                with editor.answering() as model:
                    finite = bool(torch.isfinite(model(single.cases[names.EDIT])).all())
                reports.append({**vars(report), "finite": finite})
                if len(batch) > 1:
                    with editor.answering() as model:
                        scores = target_scores(model, single, replace(self.scoring, generation=False))
                    for key in names.TARGET_METRICS:
                        immediate[key].append(scores[key])
            with editor.answering() as model:
                final = target_scores(model, batch, self.scoring)
                final.update(locality_scores_after_edit(model, batch, self.scoring, pre_topk))
                final.update(neighbour_scores(model, batch, self.scoring, pre_topk))
            gate = gate_readings(editor, batch)
        finally:
            editor.restore()
        return final, {k: torch.cat(v) for k, v in immediate.items() if v}, reports, gate

    def _step(self, batch: EditBatch, stage: str) -> None:
        records = batch.record.tolist()
        stored = self.store.load(records, batch.group) if self.store is not None else None
        if stored is None:
            final, immediate, reports, gate = self._edit_batch(batch)
            if self.store is not None:
                self.store.save(records, batch.group, final, reports, immediate, gate)
        else:
            final, immediate, reports, gate = (
                as_tensors(stored["scores"]),
                as_tensors(stored["immediate"]),
                stored["edits"],
                stored.get("gate"),
            )
        self.gate.add(gate)
        self.metrics[stage].add(final, batch.group, score_groups(batch, final))
        add_scores(self.immediate[stage], immediate)
        for report in reports:
            self.cost[stage][names.EDIT_SECONDS].update(report["seconds"])
            self.cost[stage][names.EDIT_STEPS].update(report["steps"])
            self.non_finite[stage].update(float(not report.get("finite", True)))
        for name, metric in self._logged(stage):
            self.log(name, metric, batch_size=len(records))

    def validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: EditBatch, batch_idx: int) -> None:
        self._step(batch, "test")

    def result_settings(self) -> dict[str, Any]:
        key = {"run_key": self.key.summary()} if self.key is not None else {}
        return {**super().result_settings(), **self.scoring.settings(), **self.method_settings(), **key}


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of trained weights: per-edit results stored under other weights are never reused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class TrainedEditingLoop(EditingLoop):
    """A method with trained parts (MEND, SERAC): `fit` trains them, and its validation runs the method's
    cheap `fit_validation_step` instead of editing; `validate`/`test` edit through the shared loop."""

    @property
    def fitting(self) -> bool:
        return self.trainer.state.fn == TrainerFn.FITTING

    def train(self, mode: bool = True) -> TrainedEditingLoop:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: no dropout in the base model while the method trains
        return self

    @abstractmethod
    def fit_validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        """What validation measures while fitting (no editing)."""

    def on_validation_start(self) -> None:
        if not self.fitting:
            super().on_validation_start()

    def on_validation_end(self) -> None:
        if not self.fitting:
            super().on_validation_end()

    def validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        if self.fitting:
            self.fit_validation_step(batch, batch_idx)
        else:
            super().validation_step(batch, batch_idx)
