"""LDKEModule: UniKE's edit, localized per fact, behind LDKE's Disentanglement Classifier."""

from __future__ import annotations

from typing import Any

import torch

from unike_pl.ldke.router import RoutedEditor, RouterConfig
from unike_pl.modules.editing import EditingModule
from unike_pl.modules.router import load_classifier


class LDKEModule(EditingModule):
    """LDKE (METHOD.md §5) built from UniKE's parts: each edit adds neurons only to the edited layers that
    fast localization finds for its fact (`localization`), and a trained router (`router_checkpoint`, from
    `fit --config configs/ldke_router.yaml`) sends each input to the edited model or to the original one.

    Takes every argument of `EditingModule` (trained encoders with `--ckpt_path` as for UniKE) plus the two
    below; without `localization` the neurons go into every edited layer, as in UniKE.
    """

    def __init__(self, *args: Any, router_checkpoint: str, router: RouterConfig | None = None, **kwargs: Any):
        """
        Args:
            router_checkpoint: a DisentanglementClassifierModule checkpoint (its `classifier.*` weights).
            router: the classifier's settings, as it was trained (feature layer, width) and its threshold.
        """
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.router = router or RouterConfig()
        self.classifier: torch.nn.Module | None = None

    def build_editor(self) -> RoutedEditor:
        classifier = load_classifier(self.hparams.router_checkpoint, self.mllm.hidden_size, self.router)
        self.classifier = classifier.to(self.device)
        return RoutedEditor(super().build_editor(), self.classifier, self.router)

    def trained_weights(self) -> dict[str, torch.Tensor]:
        router = self.classifier.state_dict() if self.classifier is not None else {}
        return {**super().trained_weights(), **{f"router.{k}": v for k, v in router.items()}}

    def method_settings(self) -> dict[str, Any]:
        return {**super().method_settings(), "router": vars(self.router)}
