"""Plain progress lines for runs whose output goes to a file (nohup, SLURM, CI), where a rich progress
bar draws nothing until the run ends."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from unike_pl.callbacks.report import collect_scores
from unike_pl.eta import piped, progress_line
from unike_pl.metrics import names
from unike_pl.settings import require_positive

SHOWN = (names.RELIABILITY, names.T_GENERALITY, names.M_GENERALITY, names.T_LOCALITY, names.M_LOCALITY)


class ProgressLines(L.Callback):
    """Every `every` batches (and at the last), one line: batches done, time per batch and left, and for
    editing runs the running scores. Silent when stdout is a terminal (the progress bar shows it there)."""

    def __init__(self, every: int = 10, always: bool = False) -> None:
        """
        Args:
            every: batches (edits, or training steps) between two lines.
            always: print the lines on a terminal too.
        """
        require_positive("progress", every=every)
        self.every = every
        self.always = always
        self.started = 0.0

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking and (self.always or piped())

    def _start(self, trainer: L.Trainer, *args: Any) -> None:
        self.started = time.monotonic()

    on_validation_start = on_test_start = on_train_epoch_start = _start

    def _line(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, done: int, total: int
    ) -> None:
        if not self._active(trainer) or (done % self.every and done != total):
            return
        line = progress_line(stage, done, total, self.started)
        scores_so_far = getattr(pl_module, "scores_so_far", None)
        if callable(scores_so_far) and stage in ("val", "test") and trainer.world_size == 1:
            # on several processes the scores so far would need every process at this line: only at the end
            scores = collect_scores(scores_so_far(stage), stage)
            shown = [
                f"{names.DISPLAY_NAMES[m]} {scores[k]:.1f}"
                for m in SHOWN
                if (k := names.stage_key(stage, m)) in scores
            ]
            line += " | " + ", ".join(shown) if shown else ""
        print(line, flush=True)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._line(trainer, pl_module, "val", batch_idx + 1, int(trainer.num_val_batches[dataloader_idx]))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._line(trainer, pl_module, "test", batch_idx + 1, int(trainer.num_test_batches[dataloader_idx]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.num_training_batches
        self._line(trainer, pl_module, f"epoch {trainer.current_epoch} train", batch_idx + 1, int(total))
