"""Disentangling encoders: per edited layer, a truthfulness MLP and a semantic MLP over hidden states,
and ζ, the truthful direction (mean encoded positive minus mean encoded negative)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def projection(hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class DisentangledEncoders(nn.Module):
    """Enc_Tru and Enc_Sem for each layer (keys are layer numbers as strings) plus ζ per layer."""

    def __init__(self, layers: Sequence[int], hidden: int, dim: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.dim = dim
        self.truth = nn.ModuleDict({str(layer): projection(hidden, dim) for layer in self.layers})
        self.semantic = nn.ModuleDict({str(layer): projection(hidden, dim) for layer in self.layers})
        self.register_buffer("zeta", torch.zeros(len(self.layers), dim))  # (layers, dim)

    def encode_truth(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        return self.truth[str(layer)](states.to(self.zeta))

    def encode_semantic(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        return self.semantic[str(layer)](states.to(self.zeta))

    def truthful_direction(self, layer: int) -> torch.Tensor:
        """ζ of `layer`, (dim,)."""
        return self.zeta[self.layers.index(layer)]

    @torch.no_grad()
    def set_truthful_directions(self, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """ζ from memory states (count, layers, hidden): mean Enc_Tru(pos) − mean Enc_Tru(neg).
        Returns the midpoints of the two means, (layers, dim)."""
        midpoints = torch.zeros_like(self.zeta)
        for i, layer in enumerate(self.layers):
            pos = self.encode_truth(layer, positives[:, i]).mean(0)
            neg = self.encode_truth(layer, negatives[:, i]).mean(0)
            self.zeta[i] = pos - neg
            midpoints[i] = (pos + neg) / 2
        return midpoints

    def relevance(self, layer: int, knowledge: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """α = cosine(Enc_Sem(knowledge), Enc_Sem(query)) clamped to [0, 1]; (batch, hidden) -> (batch,)."""
        similarity = F.cosine_similarity(
            self.encode_semantic(layer, knowledge), self.encode_semantic(layer, query), dim=-1
        )
        return similarity.clamp(0.0, 1.0)
