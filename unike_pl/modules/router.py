"""DisentanglementClassifierModule: trains LDKE's router with `fit` and checkpoints it."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.data.cases import EditBatch
from unike_pl.errors import UserError, read_torch_file
from unike_pl.ldke.router import KINDS, DisentanglementClassifier, RouterConfig, batch_features, routing_loss
from unike_pl.metrics.validation import ValidationMeans
from unike_pl.modules.backbone_module import BackboneModule

CLASSIFIER = "classifier."
"""Prefix of the classifier's weights in this module's checkpoints (what LDKE loads)."""


class DisentanglementClassifierModule(BackboneModule):
    """`fit` on an MMEdit-format split whose records carry neighbours (the embedded world): every batch of
    `data.train_batch_size` records pairs each edit with its own in-scope inputs (edit, rephrase, image
    rephrase, related questions), its own hard out-of-scope inputs (locality cases, hard neighbours) and
    every input of the other records. Logs the routing accuracy per kind of input; the checkpoint holds
    the classifier only (`classifier.*`)."""

    def __init__(self, backbone: BackboneConfig, router: RouterConfig | None = None) -> None:
        """
        Args:
            backbone: the frozen model whose states the router reads (the model LDKE edits).
            router: the classifier and its training.
        """
        super().__init__(backbone)
        self.save_hyperparameters()
        self.router = router or RouterConfig()
        self.classifier: DisentanglementClassifier | None = None
        self.val_losses = ValidationMeans(("loss",))
        self.routed = torch.nn.ModuleDict(
            {
                f"{stage}_routed": torch.nn.ModuleDict(
                    {kind: MeanMetric() for kind in (*KINDS, "other_edits")}
                )
                for stage in ("train", "val")
            }
        )

    def configure_model(self) -> None:
        super().configure_model()
        if self.classifier is None:
            self.classifier = DisentanglementClassifier(self.mllm.hidden_size, self.router)

    def train(self, mode: bool = True) -> DisentanglementClassifierModule:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: its states are the router's inputs
        return self

    def _step(self, batch: EditBatch, stage: str) -> torch.Tensor:
        edits, inputs = batch_features(self.mllm, batch, self.router.feature_layer)
        out = routing_loss(self.classifier, edits, inputs, self.router.threshold)
        records = len(edits)
        if stage == "val":
            self.val_losses.update("loss", out.loss, records)
        else:
            self.log("train/loss", out.loss, batch_size=records, prog_bar=True)
        metrics = self.routed[f"{stage}_routed"]
        for kind, correct in {**out.routed, "other_edits": out.other_edits}.items():
            metrics[kind].update(correct.float())
            self.log(f"{stage}/routed_{kind}", metrics[kind], batch_size=records)
        return out.loss

    def training_step(self, batch: EditBatch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_losses.log(self, prog_bar=("loss",))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.classifier.parameters(), lr=self.router.learning_rate)


def load_classifier(path: str, hidden_size: int, config: RouterConfig) -> DisentanglementClassifier:
    """The classifier of a DisentanglementClassifierModule checkpoint."""
    what = "a router checkpoint (train one with `fit --config configs/ldke_router.yaml`)"
    checkpoint = read_torch_file(path, what, map_location="cpu")
    state = {k[len(CLASSIFIER) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(CLASSIFIER)}
    if not state:
        raise UserError(
            f"{path}: no router weights ({CLASSIFIER}*); is it a DisentanglementClassifierModule checkpoint?"
        )
    classifier = DisentanglementClassifier(hidden_size, config)
    classifier.load_state_dict(state)
    return classifier.requires_grad_(False).eval()
