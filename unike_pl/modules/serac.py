"""SERACModule: trains SERAC's scope classifier and counterfactual model (`fit`), then edits with them
(`validate`/`test` through the shared editing loop)."""

from __future__ import annotations

from typing import Any

import torch

from unike_pl.backbones.loader import Backbone, BackboneConfig
from unike_pl.data.cases import EditBatch
from unike_pl.editing.serac import (
    CounterfactualConfig,
    ScopeClassifier,
    ScopeConfig,
    SERACEditor,
    counterfactual_loss,
    load_counterfactual,
    scope_features,
    scope_loss,
)
from unike_pl.errors import UserError
from unike_pl.metrics import names
from unike_pl.metrics.validation import ValidationMeans
from unike_pl.modules.edit_loop import TrainedEditingLoop
from unike_pl.scoring import ScoringConfig

COUNTERFACTUAL = "counterfactual_model."


class SERACModule(TrainedEditingLoop):
    """SERAC over a frozen backbone. `fit` (batches of `data.train_batch_size` records, whose other
    records give the scope classifier its negatives) trains the scope classifier and the
    counterfactual model on the training split; the checkpoint holds those two (`scope_classifier.*`,
    `counterfactual_model.*`), never the backbone. `validate --ckpt_path <checkpoint>` edits the eval split
    with them; editing without a trained checkpoint is refused.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        scope: ScopeConfig | None = None,
        counterfactual: CounterfactualConfig | None = None,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the model to edit (frozen; it answers every out-of-scope input).
            scope: the scope classifier and its training.
            counterfactual: the counterfactual model and its training.
            scoring: scorer settings (METHOD.md §3).
            edits_dir: folder of per-edit results; a rerun reads finished edits back. None keeps nothing.
            seed: unused by SERAC's editing (deterministic); kept for the editing loop's signature.
        """
        super().__init__(backbone, scoring, edits_dir, seed)
        self.save_hyperparameters()
        self.scope = scope or ScopeConfig()
        self.counterfactual = counterfactual or CounterfactualConfig()
        self.scope_classifier: ScopeClassifier | None = None
        self.counterfactual_model: Backbone | None = None
        self.fit_means = ValidationMeans(
            (
                "loss",
                *(f"scope_{case}" for case in names.CASES),
                "scope_accuracy",
                "counterfactual_accuracy",
                "counterfactual_locality",
            )
        )
        self.register_buffer("trained", torch.tensor(False))

    def configure_model(self) -> None:
        super().configure_model()
        if self.scope_classifier is None:
            self.scope_classifier = ScopeClassifier(2 * self.mllm.hidden_size, self.scope)
        if self.counterfactual_model is None:
            self.counterfactual_model = load_counterfactual(
                self.mllm, self.backbone_config, self.counterfactual
            )

    def on_fit_start(self) -> None:
        self.counterfactual_model.train()  # loaded in eval mode, like every `Backbone`

    # --- editing (validate / test) -------------------------------------------------------------------
    def build_editor(self) -> SERACEditor:
        if not bool(self.trained):
            raise UserError(
                "SERAC edits with a trained scope classifier and counterfactual model: pass a SERACModule "
                "checkpoint with --ckpt_path (train one with `fit --config configs/serac_vqa.yaml`)"
            )
        self.scope_classifier.eval()
        self.counterfactual_model.eval()
        return SERACEditor(self.mllm, self.scope_classifier, self.counterfactual_model, self.scope)

    def method_settings(self) -> dict[str, Any]:
        return {
            "scope": vars(self.scope),
            "counterfactual": vars(self.counterfactual),
        }

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return self.trained_state()

    def fit_validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        # While fitting: a cheap signal instead of editing (routing and counterfactual answers).
        losses = self._losses(batch)
        size = len(batch)
        means = self.fit_means
        means.update("loss", losses["loss"], size)
        routed = losses["routed"]
        for case, correct in routed.items():
            means.update(f"scope_{case}", correct.float() * 100)
        accuracy = torch.stack([c.float().mean() for c in routed.values()]).mean() * 100
        means.update("scope_accuracy", accuracy, size)
        means.update("counterfactual_accuracy", losses["target_accuracy"] * 100, size)
        means.update("counterfactual_locality", losses["locality_agreement"] * 100, size)

    def on_validation_epoch_end(self) -> None:
        if self.fitting:
            self.fit_means.log(self, prog_bar=("loss", "scope_accuracy"))

    # --- training ------------------------------------------------------------------------------------
    def _losses(self, batch: EditBatch) -> dict[str, Any]:
        cases = batch.cases
        logits, features = {}, {}
        for case in names.CASES:
            logits[case], features[case] = scope_features(self.mllm, cases[case], self.scope.feature_layer)
        scope = scope_loss(self.scope_classifier, features, self.scope.threshold)
        counterfactual = counterfactual_loss(
            self.counterfactual_model, cases, {case: logits[case] for case in names.LOCALITY_CASES}
        )
        locality = self.counterfactual.locality_weight * counterfactual.locality
        loss = scope.loss + counterfactual.target + locality
        return {
            "loss": loss,
            "scope": scope.loss,
            "target": counterfactual.target,
            "locality": counterfactual.locality,
            "routed": scope.in_scope,
            "target_accuracy": counterfactual.target_accuracy.mean(),
            "locality_agreement": counterfactual.locality_agreement.mean(),
        }

    def training_step(self, batch: EditBatch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        size = len(batch)
        self.log("train/scope_loss", losses["scope"], batch_size=size)
        self.log("train/counterfactual_loss", losses["target"], batch_size=size)
        self.log("train/locality_loss", losses["locality"], batch_size=size)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.trained.fill_(True)  # every checkpoint from now on holds trained parts

    def configure_optimizers(self) -> torch.optim.Optimizer:
        counterfactual = [p for p in self.counterfactual_model.parameters() if p.requires_grad]
        return torch.optim.Adam(
            [
                {"params": self.scope_classifier.parameters(), "lr": self.scope.learning_rate},
                {"params": counterfactual, "lr": self.counterfactual.learning_rate},
            ]
        )

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes: the classifier and the trainable weights of the counterfactual model
        (`Backbone` registers its language model twice; `named_parameters` names each weight once)."""
        state = {f"scope_classifier.{k}": v for k, v in self.scope_classifier.state_dict().items()}
        for name, parameter in self.counterfactual_model.named_parameters():
            if parameter.requires_grad:
                state[COUNTERFACTUAL + name] = parameter
        return state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The frozen rest of the counterfactual model is rebuilt by configure_model (a copy of the backbone
        # or the named model), so the checkpoint keeps only what training changed.
        trained = self.trained_state()
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(COUNTERFACTUAL) and k not in trained]:
            del state[key]
