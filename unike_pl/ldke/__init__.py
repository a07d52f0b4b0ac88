"""LDKE: fast localization of the layers that carry a fact, and the Disentanglement Classifier that routes
inputs to the edited or the original model."""

from unike_pl.ldke.localization import (
    LocalizationConfig,
    agreement,
    attribution,
    causal_tracing,
    gradient_activation,
    layer_scores,
    locate,
    own_answer_fact,
    top_layers,
)
from unike_pl.ldke.router import (
    DisentanglementClassifier,
    RoutedEditor,
    RouterConfig,
    router_features,
    routing_loss,
)

__all__ = [
    "DisentanglementClassifier",
    "LocalizationConfig",
    "RoutedEditor",
    "RouterConfig",
    "agreement",
    "attribution",
    "causal_tracing",
    "gradient_activation",
    "layer_scores",
    "locate",
    "own_answer_fact",
    "router_features",
    "routing_loss",
    "top_layers",
]
