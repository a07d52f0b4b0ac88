"""DisentangleModule: trains UniKE's truthfulness and semantic encoders on the knowledge memory."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from unike_pl.knowledge.contrastive import semantic_loss, truthfulness_loss
from unike_pl.knowledge.datamodule import KnowledgeMemoryDataModule
from unike_pl.knowledge.encoders import DisentangledEncoders


class DisentangleModule(L.LightningModule):
    """`fit` with a KnowledgeMemoryDataModule. The checkpoint holds the encoders and ζ (`encoders.*`),
    which is what an EditingModule loads with `validate --ckpt_path`."""

    def __init__(self, encoder_dim: int = 64, temperature: float = 0.1, learning_rate: float = 1e-4) -> None:
        """
        Args:
            encoder_dim: size of the truthfulness and semantic spaces.
            temperature: τ of both InfoNCE losses.
            learning_rate: Adam learning rate (the paper's 1e-4).
        """
        super().__init__()
        self.save_hyperparameters()
        self.encoders: DisentangledEncoders | None = None
        self._val: list[dict[str, torch.Tensor]] = []

    @property
    def data(self) -> KnowledgeMemoryDataModule:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, KnowledgeMemoryDataModule):
            raise TypeError("DisentangleModule trains on a KnowledgeMemoryDataModule")
        return datamodule

    def configure_model(self) -> None:
        if self.encoders is None:
            memory = self.data.memory
            self.encoders = DisentangledEncoders(memory.layers, memory.hidden_size, self.hparams.encoder_dim)

    def _encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encoded states, each (batch, layers, dim); `truth_*` and `sem_*`."""
        enc = self.encoders
        names = ("truth_pos", "truth_neg", "sem_q", "sem_pos", "sem_neg")
        out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for i, layer in enumerate(enc.layers):
            out["truth_pos"].append(enc.encode_truth(layer, batch["pos"][:, i]))
            out["truth_neg"].append(enc.encode_truth(layer, batch["neg"][:, i]))
            out["sem_q"].append(enc.encode_semantic(layer, batch["sem"][:, i]))
            out["sem_pos"].append(enc.encode_semantic(layer, batch["pos"][:, i]))
            out["sem_neg"].append(enc.encode_semantic(layer, batch["neg"][:, i]))
        return {k: torch.stack(v, dim=1) for k, v in out.items()}

    def _losses(self, z: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.hparams.temperature
        layers = range(z["truth_pos"].shape[1])
        truth = torch.stack(
            [truthfulness_loss(z["truth_pos"][:, i], z["truth_neg"][:, i], t) for i in layers]
        )
        sem = torch.stack(
            [semantic_loss(z["sem_q"][:, i], z["sem_pos"][:, i], z["sem_neg"][:, i], t) for i in layers]
        )
        return truth.mean(), sem.mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        truth, sem = self._losses(self._encode(batch))
        size = len(batch["sem"])
        self.log("train/truth_loss", truth, batch_size=size)
        self.log("train/semantic_loss", sem, batch_size=size)
        self.log("train/loss", truth + sem, prog_bar=True, batch_size=size)
        return truth + sem

    def on_validation_epoch_start(self) -> None:
        # ζ comes from the training triplets; the held-out ones measure how well it separates.
        train = self.data.splits["train"].tensors
        self._midpoints = self.encoders.set_truthful_directions(
            train["pos"].to(self.device), train["neg"].to(self.device)
        )
        self._val = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        z = self._encode(batch)
        if len(batch["sem"]) >= 2:
            truth, sem = self._losses(z)
            self.log("val/loss", truth + sem, prog_bar=True, batch_size=len(batch["sem"]))
        self._val.append({k: v.detach() for k, v in z.items()})

    def on_validation_epoch_end(self) -> None:
        z = {k: torch.cat([v[k] for v in self._val]) for k in self._val[0]}
        separation, top1 = [], []
        for i, layer in enumerate(self.encoders.layers):
            zeta = self.encoders.zeta[i]
            # A state is called truthful when its encoding lies on ζ's side of the midpoint of the two
            # training means; the score is the share of held-out positives and negatives called right.
            midpoint = self._midpoints[i]
            truthful = (z["truth_pos"][:, i] - midpoint) @ zeta > 0
            hallucinated = (z["truth_neg"][:, i] - midpoint) @ zeta <= 0
            correct = torch.cat([truthful, hallucinated])
            separation.append(correct.float().mean())
            similarity = F.normalize(z["sem_q"][:, i], dim=-1) @ F.normalize(z["sem_pos"][:, i], dim=-1).T
            hits = similarity.argmax(-1) == torch.arange(len(similarity), device=similarity.device)
            top1.append(hits.float().mean())
            self.log(f"val/truth_separation_layer{layer}", separation[-1] * 100)
            self.log(f"val/semantic_top1_layer{layer}", top1[-1] * 100)
        self.log("val/truth_separation", torch.stack(separation).mean() * 100, prog_bar=True)
        self.log("val/semantic_top1", torch.stack(top1).mean() * 100, prog_bar=True)
        self._val = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.encoders.parameters(), lr=self.hparams.learning_rate)
