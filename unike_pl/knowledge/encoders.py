"""Disentangling encoders: per edited layer, a truthfulness MLP and a semantic MLP over hidden states, and
what UniKE's collaboration reads from them once they are trained (METHOD.md §4):

- ζ, the truthful direction: mean Enc_Tru(h_pos) − mean Enc_Tru(h_neg) over the memory, (dim,);
- W_ζ, the map from the truthfulness space back to the hidden space, fitted by least squares so that
  W_ζ (Enc_Tru(h_pos) − Enc_Tru(h_neg)) ≈ h_pos − h_neg, (hidden, dim); ζ' = W_ζ ζ is the hidden-space
  direction the new FFN values are moved along;
- the same pair in the semantic space (Paper Figure 4c's "semantic ζ" control);
- the gate threshold: α (the relevance cosine(Enc_Sem(h_know), Enc_Sem(h_input)), averaged over the edited
  layers) below it is set to 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unike_pl.errors import UserError

ZETA_KINDS = ("truthful", "semantic", "random")
"""Which direction moves the new values: ζ (UniKE), the semantic-space analogue, or a random vector of
ζ's norm mapped by the same W_ζ (the last two are the paper's Figure 4c controls)."""


def projection(hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


def fit_map(codes: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """W (hidden, dim) minimising ‖codes Wᵀ − targets‖² + ridge·‖W‖²: codes (count, dim) -> (count, hidden).
    The ridge term (relative to the codes' scale) keeps W finite when the codes are nearly collinear."""
    codes, targets = codes.double(), targets.double()
    gram = codes.T @ codes
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, codes.T @ targets).T.float()


def direction_and_map(
    code_pos: torch.Tensor, code_neg: torch.Tensor, change: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From encoded positives and negatives (count, dim) and their hidden-state change h_pos − h_neg
    (count, hidden): the direction mean(code_pos) − mean(code_neg), the map back to the hidden space, and
    the midpoint of the two means."""
    mean_pos, mean_neg = code_pos.mean(0), code_neg.mean(0)
    return mean_pos - mean_neg, fit_map(code_pos - code_neg, change), (mean_pos + mean_neg) / 2


class DisentangledEncoders(nn.Module):
    """Enc_Tru and Enc_Sem for each layer (keys are layer numbers as strings), with ζ, W_ζ, their semantic
    analogues and the gate threshold per layer as buffers (saved in the DisentangleModule checkpoint)."""

    def __init__(self, layers: Sequence[int], hidden: int, dim: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.dim = dim
        count = len(self.layers)
        self.truth = nn.ModuleDict({str(layer): projection(hidden, dim) for layer in self.layers})
        self.semantic = nn.ModuleDict({str(layer): projection(hidden, dim) for layer in self.layers})
        self.register_buffer("zeta", torch.zeros(count, dim))  # (layers, dim)
        self.register_buffer("zeta_map", torch.zeros(count, hidden, dim))  # W_ζ per layer
        self.register_buffer("semantic_zeta", torch.zeros(count, dim))
        self.register_buffer("semantic_zeta_map", torch.zeros(count, hidden, dim))
        self.register_buffer("gate_threshold", torch.zeros(()))

    @property
    def trained(self) -> bool:
        """Whether ζ and W_ζ have been fitted (an untrained module has them all zero)."""
        return bool(self.zeta.any()) and bool(self.zeta_map.any())

    def encode_truth(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        return self.truth[str(layer)](states.to(self.zeta))

    def encode_semantic(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        return self.semantic[str(layer)](states.to(self.zeta))

    def direction(self, layer: int, kind: str = "truthful", seed: int = 0) -> torch.Tensor:
        """ζ of `layer` in its space, (dim,). `kind` is one of ZETA_KINDS: "semantic" is the same recipe in
        the semantic space; "random" replaces ζ by a seeded random vector of the same norm."""
        i = self.layers.index(layer)
        if kind == "truthful":
            return self.zeta[i]
        if kind == "semantic":
            return self.semantic_zeta[i]
        if kind == "random":
            generator = torch.Generator().manual_seed(seed * 1000 + layer)
            direction = torch.randn(self.dim, generator=generator).to(self.zeta)
            return direction * self.zeta[i].norm() / direction.norm()
        raise UserError(f"unknown ζ kind {kind!r}; choose one of {', '.join(ZETA_KINDS)}")

    def value_direction(self, layer: int, kind: str = "truthful", seed: int = 0) -> torch.Tensor:
        """ζ' = W_ζ ζ in the hidden space of `layer`, (hidden,): the direction β scales on the new values
        (the semantic ζ goes through the semantic space's own map)."""
        i = self.layers.index(layer)
        zeta_map = self.semantic_zeta_map[i] if kind == "semantic" else self.zeta_map[i]
        return zeta_map @ self.direction(layer, kind, seed)

    @torch.no_grad()
    def fit_directions(self, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """ζ, W_ζ and their semantic analogues from memory states (count, layers, hidden).
        Returns the midpoints of the two truthfulness means, (layers, dim)."""
        midpoints = torch.zeros_like(self.zeta)
        for i, layer in enumerate(self.layers):
            pos, neg = positives[:, i].to(self.zeta), negatives[:, i].to(self.zeta)
            self.zeta[i], self.zeta_map[i], midpoints[i] = direction_and_map(
                self.encode_truth(layer, pos), self.encode_truth(layer, neg), pos - neg
            )
            self.semantic_zeta[i], self.semantic_zeta_map[i], _ = direction_and_map(
                self.encode_semantic(layer, pos), self.encode_semantic(layer, neg), pos - neg
            )
        return midpoints

    def relevance(self, layer: int, knowledge: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """cosine(Enc_Sem(knowledge), Enc_Sem(query)) clamped to [0, 1] for every pair:
        knowledge (edits, hidden), queries (batch, hidden) -> (batch, edits). No threshold applied."""
        keys = F.normalize(self.encode_semantic(layer, knowledge), dim=-1)
        reads = F.normalize(self.encode_semantic(layer, queries), dim=-1)
        return (reads @ keys.T).clamp(0.0, 1.0)
