"""LDKE: fast localization of the layers that carry a fact (a disentanglement router comes next)."""

from unike_pl.ldke.localization import (
    agreement,
    causal_tracing_scores,
    gradient_activation_scores,
    top_layers,
)

__all__ = ["agreement", "causal_tracing_scores", "gradient_activation_scores", "top_layers"]
