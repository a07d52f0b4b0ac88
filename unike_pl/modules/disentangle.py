"""DisentangleModule: trains UniKE's truthfulness and semantic encoders on the knowledge memory."""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from unike_pl.data.sharding import gather_rows
from unike_pl.knowledge.contrastive import semantic_loss, truthfulness_loss
from unike_pl.knowledge.datamodule import KnowledgeMemoryDataModule
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.gate import fit_threshold, relevance_pairs
from unike_pl.metrics.validation import ValidationMeans

PROGRESS = ("truth_separation", "semantic_top1", "gate_out_of_scope")
"""Validation scores shown in the progress bar."""


class DisentangleModule(L.LightningModule):
    """`fit` with a KnowledgeMemoryDataModule. Each validation fits what editing reads from the encoders:
    ζ and W_ζ (and their semantic analogues) on the training triplets, the gate threshold on the held-out
    records. The checkpoint holds all of it (`encoders.*`), which is what an EditingModule loads with
    `validate --ckpt_path`."""

    def __init__(
        self,
        encoder_dim: int = 64,
        temperature: float = 0.1,
        learning_rate: float = 1e-4,
        gather_negatives: bool = True,
    ) -> None:
        """
        Args:
            encoder_dim: size of the truthfulness and semantic spaces.
            temperature: τ of both InfoNCE losses.
            learning_rate: Adam learning rate (the paper's 1e-4).
            gather_negatives: with several processes, each training batch is contrasted with the other
                processes' batches too (their encodings gathered with gradients), as one process would
                contrast a batch of them all; False keeps each process's negatives its own.
        """
        super().__init__()
        self.save_hyperparameters()
        self.encoders: DisentangledEncoders | None = None
        self._val: list[dict[str, torch.Tensor]] = []
        self.val_losses = ValidationMeans(("loss",))

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

    def _gathered(self, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encodings of every process's batch, this process's with their gradients (each process then
        computes the loss of the whole step's batch; DDP's gradient mean gives that loss's gradient)."""
        if not self.hparams.gather_negatives or self.trainer.world_size == 1:
            return z
        return {key: self.all_gather(value, sync_grads=True).flatten(0, 1) for key, value in z.items()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        truth, sem = self._losses(self._gathered(self._encode(batch)))
        size = len(batch["sem"])
        self.log("train/truth_loss", truth, batch_size=size)
        self.log("train/semantic_loss", sem, batch_size=size)
        self.log("train/loss", truth + sem, prog_bar=True, batch_size=size)
        return truth + sem

    def on_validation_epoch_start(self) -> None:
        # ζ and W_ζ come from the training triplets; the held-out ones measure how well they hold.
        train = self.data.splits["train"].tensors
        self._midpoints = self.encoders.fit_directions(
            train["pos"].to(self.device), train["neg"].to(self.device)
        )
        self._val = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        z = self._encode(batch)
        if len(batch["sem"]) >= 2:
            truth, sem = self._losses(z)
            self.val_losses.update("loss", truth + sem, len(batch["sem"]))
        kept = {key: batch[key] for key in ("pos", "neg", "record", "in_scope", "is_edit")}
        self._val.append({k: v.detach() for k, v in {**z, **kept}.items()})

    def on_validation_epoch_end(self) -> None:
        # Every process scores the whole held-out split (its share arrived on each process separately).
        world = self.trainer.world_size
        z = {
            k: gather_rows(torch.cat([v[k] for v in self._val]), self.all_gather, world) for k in self._val[0]
        }
        scores: dict[str, list[torch.Tensor]] = defaultdict(list)
        for i, layer in enumerate(self.encoders.layers):
            layer_scores = {
                "truth_separation": self._truth_separation(z, i) * 100,
                "semantic_top1": self._semantic_top1(z, i) * 100,
                "zeta_map_r2": self._zeta_map_r2(z, i),
            }
            for name, value in layer_scores.items():
                scores[name].append(torch.as_tensor(value, dtype=torch.float32))
                self.log(f"val/{name}_layer{layer}", value)
        for name, values in scores.items():
            self.log(f"val/{name}", torch.stack(values).mean(), prog_bar=name in PROGRESS)
        for name, value in self._fit_gate(z).items():
            self.log(f"val/{name}", value, prog_bar=name in PROGRESS)
        self.val_losses.log(self, prog_bar=("loss",))
        self._val = []

    def _truth_separation(self, z: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """Share of held-out positives and negatives on the right side of the midpoint of the two training
        means along ζ."""
        zeta, midpoint = self.encoders.zeta[i], self._midpoints[i]
        truthful = (z["truth_pos"][:, i] - midpoint) @ zeta > 0
        hallucinated = (z["truth_neg"][:, i] - midpoint) @ zeta <= 0
        return torch.cat([truthful, hallucinated]).float().mean()

    def _semantic_top1(self, z: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """Share of held-out questions whose nearest encoded positive is their own."""
        similarity = F.normalize(z["sem_q"][:, i], dim=-1) @ F.normalize(z["sem_pos"][:, i], dim=-1).T
        hits = similarity.argmax(-1) == torch.arange(len(similarity), device=similarity.device)
        return hits.float().mean()

    def _zeta_map_r2(self, z: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """How much of h_pos − h_neg W_ζ explains on held-out triplets (R², 1 is exact, 0 is the mean)."""
        change = (z["pos"][:, i] - z["neg"][:, i]).to(self.encoders.zeta_map)
        predicted = (z["truth_pos"][:, i] - z["truth_neg"][:, i]) @ self.encoders.zeta_map[i].T
        residual = (change - predicted).pow(2).sum()
        return 1 - residual / (change - change.mean(0)).pow(2).sum().clamp_min(1e-12)

    def _fit_gate(self, z: dict[str, torch.Tensor]) -> dict[str, float]:
        """The gate threshold from held-out records: each record's edit (its positive state is the gate key)
        against every held-out input, α averaged over the layers as the gate reads it; stored in the
        encoders (and so in the checkpoint)."""
        edits = z["is_edit"]
        in_scope = (z["record"][:, None] == z["record"][edits][None, :]) & z["in_scope"][:, None]
        if not bool(in_scope.any()) or bool(in_scope.all()):
            rank_zero_warn("no held-out record has both in-scope and out-of-scope inputs: gate not fitted")
            return {}
        layers = range(len(self.encoders.layers))
        alpha = torch.stack([relevance_pairs(z["sem_pos"][edits, i], z["sem_q"][:, i]) for i in layers]).mean(
            0
        )
        fit = fit_threshold(alpha, in_scope)
        self.encoders.gate_threshold.fill_(fit.threshold)
        return {
            "gate_threshold": fit.threshold,
            "gate_in_scope": fit.in_scope_pass * 100,
            "gate_out_of_scope": fit.out_of_scope_pass * 100,
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.encoders.parameters(), lr=self.hparams.learning_rate)
