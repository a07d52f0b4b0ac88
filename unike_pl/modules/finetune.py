"""FineTuneModule: the FT baseline (the last layer fine-tuned on each edit) in the shared editing loop."""

from __future__ import annotations

from typing import Any

from unike_pl.backbones.loader import BackboneConfig
from unike_pl.editing.finetune import FineTuneConfig, FineTuneEditor
from unike_pl.modules.edit_loop import EditingLoop
from unike_pl.scoring import ScoringConfig


class FineTuneModule(EditingLoop):
    """FT: no memory and no trained parts; the weights of the last layer(s) are trained per edit."""

    def __init__(
        self,
        backbone: BackboneConfig,
        finetune: FineTuneConfig | None = None,
        scoring: ScoringConfig | None = None,
        edits_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the model to edit.
            finetune: which layers, learning rate and step cap.
            scoring: scorer settings (METHOD.md §3).
            edits_dir: folder of per-edit results; a rerun reads finished edits back. None keeps nothing.
            seed: unused by FT itself; kept so that every editing module takes the same settings.
        """
        super().__init__(backbone, scoring, edits_dir, seed)
        self.save_hyperparameters()
        self.finetune = finetune or FineTuneConfig()

    def build_editor(self) -> FineTuneEditor:
        return FineTuneEditor(self.mllm, self.finetune)

    def method_settings(self) -> dict[str, Any]:
        return {"finetune": vars(self.finetune)}
