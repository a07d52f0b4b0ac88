"""The semantic gate's threshold, fitted on held-out training records.

An edit's gate key is its own positive state (Q + A_pos at the last token); an input is in the edit's scope
when it is the edit, its rephrase or its image rephrase, and out of it otherwise (another record's inputs,
the record's own locality inputs). The threshold is the α that best separates the two: the one maximising
balanced accuracy (the mean of the in-scope pass rate and the out-of-scope block rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class GateFit:
    threshold: float
    in_scope_pass: float
    """Share of in-scope (edit, input) pairs whose α reaches the threshold."""
    out_of_scope_pass: float
    """Share of out-of-scope pairs whose α reaches it (what the gate lets through by mistake)."""


def relevance_pairs(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """α of every (query, key) pair from their semantic encodings: (queries, dim), (keys, dim) -> (queries,
    keys), cosine clamped to [0, 1] as in `DisentangledEncoders.relevance`."""
    return (F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T).clamp(0.0, 1.0)


def fit_threshold(alpha: torch.Tensor, in_scope: torch.Tensor, candidates: int = 201) -> GateFit:
    """The threshold on `alpha` (any shape, in [0, 1]) that best separates the `in_scope` pairs (bools, same
    shape) from the rest; candidates are evenly spaced in [0, 1]."""
    alpha, in_scope = alpha.flatten().float(), in_scope.flatten().bool()
    if not bool(in_scope.any()) or bool(in_scope.all()):
        raise ValueError("fitting the gate threshold needs both in-scope and out-of-scope pairs")
    thresholds = torch.linspace(0.0, 1.0, candidates, device=alpha.device)
    passes = alpha[None, :] >= thresholds[:, None]  # (candidates, pairs)
    in_pass = passes[:, in_scope].float().mean(1)
    out_pass = passes[:, ~in_scope].float().mean(1)
    best = int(((in_pass + 1.0 - out_pass) / 2).argmax())
    return GateFit(float(thresholds[best]), float(in_pass[best]), float(out_pass[best]))
