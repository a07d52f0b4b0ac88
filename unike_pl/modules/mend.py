"""MENDModule: trains MEND's hypernetwork (`fit`) and edits with it in the shared editing loop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchmetrics import MetricCollection

from unike_pl.backbones.encoding import append_eos
from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import EditBatch
from unike_pl.editing.mend import (
    EditedLinear,
    MENDConfig,
    MENDEditor,
    MENDHyperNetwork,
    edited_linears,
    gradient_factors,
    updates_applied,
)
from unike_pl.editing.tail import TailRunner
from unike_pl.errors import UserError
from unike_pl.losses import answer_loss, kl_to_reference
from unike_pl.metrics import names
from unike_pl.metrics.editing import SampleMean
from unike_pl.metrics.groups import add_scores
from unike_pl.metrics.scorers import locality_scores, target_scorer, top_k_predictions
from unike_pl.metrics.validation import ValidationMeans
from unike_pl.modules.edit_loop import TrainedEditingLoop
from unike_pl.scoring import PRE_EDIT_TOP_K, ScoringConfig


class MENDModule(TrainedEditingLoop):
    """MEND (Mitchell et al., ICLR 2022). `fit` trains the hypernetwork on `data.train_file` (the
    backbone stays frozen; checkpoints hold the hypernetwork only); `validate`/`test` edit `data.eval_file`
    with it, loaded by `--ckpt_path`.

    Training, per record: the edit case's gradient gives the update; with it applied, the loss is
    `edit_weight`·CE on the edit, rephrase and image-rephrase targets (the edit must hold and carry over)
    plus `locality_weight`·KL(pre ‖ post) on the two locality cases. Each record of a batch is edited
    with its own update. Validation during `fit` is a cheap signal on the first `fit_val_edits` eval
    records: teacher-forced Rel / T-Gen / M-Gen / T-Loc / M-Loc of one-step edits, no generation.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        mend: MENDConfig | None = None,
        learning_rate: float = 1e-3,
        edit_lr_learning_rate: float = 1e-4,
        edit_weight: float = 1.0,
        locality_weight: float = 1.0,
        fast_tail: bool = True,
        fit_val_edits: int = 100,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the model to edit.
            mend: the edited linears and the hypernetwork's size.
            learning_rate: Adam learning rate of the hypernetwork.
            edit_lr_learning_rate: Adam learning rate of the learned per-linear edit learning rates.
            edit_weight: weight of the post-edit CE on the edit and its rephrasings (c_edit).
            locality_weight: weight of the locality KL (c_loc).
            fast_tail: while training, compute the frozen layers before the edited ones once per case.
            fit_val_edits: eval records scored by the validation inside `fit` (validate scores all).
            scoring: scorer settings (METHOD.md §3).
            edits_dir: folder of per-edit results; a rerun reads finished edits back. None keeps nothing.
            seed: unused by MEND (`seed_everything` seeds the initialisation); kept so that every editing
                module takes the same settings.
        """
        super().__init__(backbone, scoring, edits_dir, seed)
        self.save_hyperparameters()
        self.mend = mend or MENDConfig()
        self.hypernetwork: MENDHyperNetwork | None = None
        self.linears: list[EditedLinear] = []
        self.fit_metrics = MetricCollection(
            {key: SampleMean() for key in names.TARGET_METRICS + names.LOCALITY_METRICS},
            prefix="val/",
            compute_groups=False,
        )
        self.fit_loss = ValidationMeans(("loss",))

    def configure_model(self) -> None:
        super().configure_model()
        self.linears = edited_linears(self.mllm, self.mllm.last_layers(self.mend.layers))
        if self.hypernetwork is None:
            self.hypernetwork = MENDHyperNetwork.for_linears(self.linears, self.mend)

    # --- training -------------------------------------------------------------------------------------
    def _runner(self, encoded: Mapping[str, Any]) -> Callable[[], torch.Tensor]:
        """A function returning the logits of `encoded`, run from the first edited layer when it can."""
        if not self.hparams.fast_tail:
            return lambda: self.mllm(encoded)
        tail = TailRunner(self.mllm, self.mllm.last_layers(self.mend.layers)[0])
        prefix = tail.capture(encoded)
        return lambda: tail.logits(prefix)

    def _edited_cases(self, batch: EditBatch) -> dict[str, Any]:
        """Edits every record of the batch with its own update and returns the cases, their pre-edit
        locality logits, post-edit logits and the loss terms."""
        cases = dict(batch.cases)
        eos = self.mllm.encoder.tokenizer.eos_token_id
        if self.mend.append_eos and eos is not None:
            cases.update({case: append_eos(cases[case], eos) for case in names.TARGET_CASES})
        run = {case: self._runner(encoded) for case, encoded in cases.items()}
        edit = cases[names.EDIT]
        factors = gradient_factors(self.linears, run[names.EDIT], edit["labels"], edit["attention_mask"])
        updates = self.hypernetwork(factors)  # row r holds record r's update
        with torch.no_grad():
            pre = {case: run[case]() for case in names.LOCALITY_CASES}
        with updates_applied(self.linears, updates):
            post = {case: run[case]() for case in names.CASES}
        edit_loss = torch.stack([answer_loss(post[c], cases[c]["labels"]) for c in names.TARGET_CASES]).mean()
        locality_loss = torch.stack(
            [
                kl_to_reference(pre[c], post[c], cases[c]["attention_mask"].bool())
                for c in names.LOCALITY_CASES
            ]
        ).mean()
        loss = self.hparams.edit_weight * edit_loss + self.hparams.locality_weight * locality_loss
        return {
            "pre": pre,
            "post": post,
            "edit_loss": edit_loss,
            "locality_loss": locality_loss,
            "loss": loss,
        }

    def training_step(self, batch: EditBatch, batch_idx: int) -> torch.Tensor:
        out = self._edited_cases(batch)
        self.hypernetwork.trained.fill_(True)
        size = len(batch)
        self.log("train/edit_loss", out["edit_loss"], batch_size=size)
        self.log("train/locality_loss", out["locality_loss"], batch_size=size)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        self.log("train/edit_lr", self.hypernetwork.edit_lrs.detach().mean(), batch_size=size)
        return out["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        net = self.hypernetwork
        networks = [p for name, p in net.named_parameters() if name != "edit_lrs"]
        return torch.optim.Adam(
            [
                {"params": networks, "lr": self.hparams.learning_rate},
                {"params": [net.edit_lrs], "lr": self.hparams.edit_lr_learning_rate},
            ]
        )

    # --- validation: a cheap signal inside fit, the shared editing loop otherwise ----------------------
    def fit_validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        # The first `fit_val_edits` records of the split, wherever they are: batch i of process r is the
        # split's batch i · world + r (whole batches are dealt out in turn).
        first = (batch_idx * self.trainer.world_size + self.global_rank) * len(batch)
        if first >= self.hparams.fit_val_edits:
            return
        out = self._edited_cases(batch)
        scorer = target_scorer(self.scoring.target_scorer)
        scores = {}
        for case in names.TARGET_CASES:
            labels = batch.cases[case]["labels"]  # the target tokens only (no EOS), as scored
            scores[names.CASE_METRIC[case]] = scorer(out["post"][case][:, : labels.shape[1]], labels)
        for case in names.LOCALITY_CASES:
            encoded, metric = batch.cases[case], names.CASE_METRIC[case]
            scores[metric] = locality_scores(
                self.scoring.locality_scorer,
                out["post"][case],
                top_k_predictions(out["pre"][case], PRE_EDIT_TOP_K),
                encoded["labels"],
                encoded["attention_mask"],
                names.LOCALITY_TOP_K[metric],
            )
        add_scores(self.fit_metrics, {key: value.float() for key, value in scores.items()})
        self.fit_loss.update("loss", out["loss"], len(batch))

    def on_validation_epoch_end(self) -> None:
        # Logged here, by every process, even one whose batches all lay past `fit_val_edits`: the metrics'
        # states are summed over the processes when they are computed.
        if self.fitting:
            self.fit_loss.log(self, prog_bar=("loss",))
            self.log_dict(self.fit_metrics)

    # --- editing ---------------------------------------------------------------------------------------
    def build_editor(self) -> MENDEditor:
        if not bool(self.hypernetwork.trained):
            raise UserError(
                "MEND edits with a trained hypernetwork: pass a MENDModule checkpoint with --ckpt_path "
                "(train one with `python -m unike_pl fit --config configs/mend_vqa.yaml`)"
            )
        return MENDEditor(self.mllm, self.hypernetwork, self.mend)

    def method_settings(self) -> dict[str, Any]:
        return {
            "mend": vars(self.mend),
        }

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return self.hypernetwork.state_dict()
