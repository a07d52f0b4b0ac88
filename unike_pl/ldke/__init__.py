"""LDKE: fast localization of the layers that carry a fact (a disentanglement router comes next)."""

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

__all__ = [
    "LocalizationConfig",
    "agreement",
    "attribution",
    "causal_tracing",
    "gradient_activation",
    "layer_scores",
    "locate",
    "own_answer_fact",
    "top_layers",
]
