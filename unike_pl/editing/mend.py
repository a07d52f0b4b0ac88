"""MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022): a trained hypernetwork turns the
rank-1 gradient factors of chosen linears into a weight update.

For a linear y = W u, the loss gradient over a sequence is Σ_t δ_t u_tᵀ (u_t: the linear's input at
token t, δ_t: the loss gradient w.r.t. its output there). MEND standardises each (u_t, δ_t), maps the
pair through a small MLP with an identity-initialised low-rank residual to (ũ_t, δ̃_t), and edits
W by ΔW = −lr · Σ_t δ̃_t ũ_tᵀ with a learned lr per linear. One network is shared by the linears of one
shape; a learned per-linear scale and offset of its hidden units tells them apart.

The update is kept as its factors and added by forward hooks, y + (u ũᵀ)(−lr δ̃): the base weights never
change (`restore` drops the factors), and training backpropagates through them into the hypernetwork.
Nothing here knows Lightning: `unike_pl.modules.mend.MENDModule` trains the network and edits with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from unike_pl.backbones.encoding import append_eos
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.base import AnsweringModel, Editor, EditReport
from unike_pl.hooks import hooks
from unike_pl.losses import answer_loss_per_sample
from unike_pl.metrics.scorers import exact_match
from unike_pl.settings import require_positive


@dataclass
class MENDConfig:
    """The hypernetwork: which linears it edits and how large it is."""

    layers: int = 3
    """The FFN key and value linears of the last `layers` decoder layers are edited (gated FFNs: gate,
    up and down projections)."""
    rank: int = 64
    """Width of the low-rank residual of each MLP block."""
    blocks: int = 1
    """Residual blocks of the MLP (MEND: one hidden layer)."""
    edit_lr: float = 1e-4
    """Initial edit learning rate of every linear (learned)."""
    std_floor: float = 0.01
    """Running standard deviations are floored at this fraction of their mean, so that features that
    were (almost) never active in training cannot blow up."""
    append_eos: bool = True
    """Edits (and the training targets) end with EOS, so that the edited model also learns to stop after
    the new answer (greedy generation accuracy); scoring still uses the target tokens only."""

    # --------------------------------------------------------------------------------------------------------
    # Which linears are edited
    # --------------------------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        require_positive("mend", layers=self.layers, rank=self.rank, blocks=self.blocks)


@dataclass(frozen=True)
class EditedLinear:
    """One linear MEND edits: where it sits and its sizes (independent of how the weight is stored)."""

    name: str
    """`{layer}.{path}`, e.g. `5.fc2`."""
    module: nn.Module
    in_features: int
    out_features: int


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear: `nn.Linear` stores its weight (out, in), transformers' `Conv1D` (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    raise TypeError(f"MEND edits linear layers; got {type(module).__name__}")


def edited_linears(backbone: Backbone, layers: Sequence[int]) -> list[EditedLinear]:
    """The FFN key linears (one, or gate and up) and the value linear of each of `layers`."""
    decoder = backbone.decoder
    linears = []
    for layer in layers:
        for path in (*decoder.ffn_keys, decoder.ffn_value):
            module = backbone.layer_part(layer, path)
            linears.append(EditedLinear(f"{layer}.{path}", module, *linear_features(module)))
    return linears


# --------------------------------------------------------------------------------------------------------
# The hypernetwork
# --------------------------------------------------------------------------------------------------------


class RunningStandardizer(nn.Module):
    """Standardises features with the mean and std of every token seen while training (MEND's online
    normalisation; the statistics freeze in eval mode). Before any update it is the identity."""

    def __init__(self, dim: int, floor: float) -> None:
        super().__init__()
        self.floor = floor
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))  # sum of squared deviations (Welford / Chan)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add the rows of `x` (tokens, dim) to the statistics."""
        if len(x) == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + len(x)
        shift = batch_mean - self.mean
        self.m2 += batch_m2 + shift**2 * self.count * len(x) / total
        self.mean += shift * len(x) / total
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt()
        return (x - self.mean) / std.clamp_min(self.floor * std.mean() + 1e-12)


class LowRankResidual(nn.Module):
    """x + B·relu(s_m ⊙ (A x + a) + o_m), with B = 0 at initialisation (the identity); s_m and o_m are
    the scale and offset of member m, one of the linears that share the block."""

    def __init__(self, dim: int, rank: int, members: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(members, rank))
        self.offset = nn.Parameter(torch.zeros(members, rank))

    def forward(self, x: torch.Tensor, member: int) -> torch.Tensor:
        hidden = self.down(x) * self.scale[member] + self.offset[member]  # (tokens, rank)
        return x + self.up(torch.relu(hidden))


class FactorTransform(nn.Module):
    """The network of every edited linear of one shape (in, out): standardise u and δ, run one MLP over
    [u; δ] and split its output into (ũ, δ̃) (MEND's "combined" variant)."""

    def __init__(self, in_features: int, out_features: int, members: int, config: MENDConfig) -> None:
        super().__init__()
        self.sizes = (in_features, out_features)
        self.norm_u = RunningStandardizer(in_features, config.std_floor)
        self.norm_delta = RunningStandardizer(out_features, config.std_floor)
        dim = in_features + out_features
        self.blocks = nn.ModuleList(LowRankResidual(dim, config.rank, members) for _ in range(config.blocks))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, member: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ũ, δ̃) for the tokens u (tokens, in) and δ (tokens, out) of linear `member`."""
        if self.training:
            self.norm_u.update(u)
            self.norm_delta.update(delta)
        x = torch.cat([self.norm_u(u), self.norm_delta(delta)], dim=-1)  # (tokens, in + out)
        for block in self.blocks:
            x = block(x, member)
        u_tilde, delta_tilde = x.split(self.sizes, dim=-1)
        return u_tilde, delta_tilde


@dataclass
class GradientFactors:
    """What a linear's gradient is made of, per sample row: inputs u (rows, seq, in), output gradients
    δ (rows, seq, out) and the tokens that carry a gradient (rows, seq)."""

    u: torch.Tensor
    delta: torch.Tensor
    mask: torch.Tensor


@dataclass
class FactorUpdate:
    """ΔW of one linear as factors, per sample row r: ΔW_r = values_rᵀ keys_r, with keys (rows, tokens,
    in) = ũ and values (rows, tokens, out) = −lr·δ̃. One row applies to every sample of a batch; `rows`
    rows apply row by row (training edits every record of a batch with its own update)."""

    keys: torch.Tensor
    values: torch.Tensor

    def weight_delta(self) -> torch.Tensor:
        """ΔW, (rows, out, in): what would be added to an `nn.Linear` weight."""
        return self.values.transpose(1, 2) @ self.keys

    def then(self, later: FactorUpdate) -> FactorUpdate:
        """This update followed by `later`: the ΔW add up (the factors are concatenated)."""
        return FactorUpdate(torch.cat([self.keys, later.keys], 1), torch.cat([self.values, later.values], 1))

    def output_change(self, u: torch.Tensor) -> torch.Tensor:
        """ΔW u for inputs (batch, seq, in) or (batch * seq, in), in the inputs' shape (out features)."""
        rows = len(self.keys)
        if rows > 1 and u.dim() == 3 and len(u) != rows:
            raise ValueError(f"an update of {rows} rows cannot apply to a batch of {len(u)}")
        flat = u.reshape(rows, -1, u.shape[-1]).to(self.keys.dtype)  # (rows, tokens, in)
        change = (flat @ self.keys.transpose(1, 2)) @ self.values  # (rows, tokens, out)
        return change.reshape(*u.shape[:-1], change.shape[-1])


class MENDHyperNetwork(nn.Module):
    """Maps the gradient factors of each edited linear to its update; one `FactorTransform` per shape.

    `trained` is set by training: an untrained network must not be used to edit.
    """

    def __init__(self, linears: Sequence[tuple[str, int, int]], config: MENDConfig) -> None:
        """`linears`: (name, in, out) of each edited linear, in a fixed order."""
        super().__init__()
        self.names = [name for name, _, _ in linears]
        shapes: dict[str, list[int]] = {}
        self.member: dict[str, tuple[str, int]] = {}
        for name, in_features, out_features in linears:
            members = shapes.setdefault(f"{in_features}x{out_features}", [])
            self.member[name] = (f"{in_features}x{out_features}", len(members))
            members.append(in_features)
        self.transforms = nn.ModuleDict(
            {
                shape: FactorTransform(*map(int, shape.split("x")), len(members), config)
                for shape, members in shapes.items()
            }
        )
        self.edit_lrs = nn.Parameter(torch.full((len(linears),), float(config.edit_lr)))
        self.register_buffer("trained", torch.tensor(False))

    @classmethod
    def for_linears(cls, linears: Sequence[EditedLinear], config: MENDConfig) -> MENDHyperNetwork:
        return cls([(lin.name, lin.in_features, lin.out_features) for lin in linears], config)

    def update(self, name: str, factors: GradientFactors) -> FactorUpdate:
        """The update of linear `name`; tokens outside the mask get zero factors (they add nothing)."""
        shape, member = self.member[name]
        mask = factors.mask
        u_tilde, delta_tilde = self.transforms[shape](
            factors.u[mask].float(), factors.delta[mask].float(), member
        )
        keys = factors.u.new_zeros(factors.u.shape, dtype=torch.float32)
        values = factors.delta.new_zeros(factors.delta.shape, dtype=torch.float32)
        keys[mask] = u_tilde
        values[mask] = -self.edit_lrs[self.names.index(name)] * delta_tilde
        return FactorUpdate(keys, values)

    def forward(self, factors: Mapping[str, GradientFactors]) -> dict[str, FactorUpdate]:
        return {name: self.update(name, factors[name]) for name in self.names}


# --------------------------------------------------------------------------------------------------------
# Hooks: reading the factors and applying updates
# --------------------------------------------------------------------------------------------------------


@contextmanager
def updates_applied(linears: Sequence[EditedLinear], updates: Mapping[str, FactorUpdate]) -> Iterator[None]:
    """While the block runs, each linear adds ΔW u to its output; the hooks are always removed on exit."""

    def hook(update: FactorUpdate) -> Callable[..., torch.Tensor]:
        def add(_: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return output + update.output_change(args[0]).to(output.dtype)

        return add

    with hooks() as attached:
        for lin in linears:
            if lin.name in updates:
                attached.post(lin.module, hook(updates[lin.name]))
        yield


def gradient_factors(
    linears: Sequence[EditedLinear],
    forward: Callable[[], torch.Tensor],
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
) -> dict[str, GradientFactors]:
    """Run `forward` (logits of the encoded edit batch) and read, for every linear, its inputs and the
    gradient of the edit loss w.r.t. its outputs. Each row's gradient is that of its own mean loss over
    its target tokens (rows do not mix). Tokens that are padding or carry no gradient are masked out.
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[..., torch.Tensor]:
        def hook(_: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            inputs[name] = args[0].detach()
            if not output.requires_grad:
                # The frozen backbone builds no graph before the first edited linear: start it here.
                output = output.detach().requires_grad_(True)
            outputs[name] = output
            return output

        return hook

    with hooks() as attached, torch.enable_grad():
        for lin in linears:
            attached.post(lin.module, capture(lin.name))
        logits = forward()
        loss = answer_loss_per_sample(logits, labels).sum()
        missing = [lin.name for lin in linears if lin.name not in outputs]
        if missing:
            raise RuntimeError(f"the forward never called the edited linears {missing}")
        grads = torch.autograd.grad(loss, [outputs[lin.name] for lin in linears], allow_unused=True)
    rows, seq = attention_mask.shape
    factors = {}
    for lin, grad in zip(linears, grads, strict=True):
        u = inputs[lin.name].reshape(rows, seq, -1)  # some FFNs see (batch * seq, hidden)
        delta = torch.zeros_like(outputs[lin.name]) if grad is None else grad
        delta = delta.detach().reshape(rows, seq, -1)
        mask = attention_mask.bool() & (delta != 0).any(-1) & (u != 0).any(-1)
        factors[lin.name] = GradientFactors(u, delta, mask)
    return factors


# --------------------------------------------------------------------------------------------------------
# The editor
# --------------------------------------------------------------------------------------------------------


class MENDEditor(Editor):
    """Edits with a trained hypernetwork: one gradient of the edit loss, one update per edited linear.

    Sequential edits take their gradient on the model as edited so far, and their updates add up.
    The base weights never change: the updates are hooks, `restore` drops them.
    """

    def __init__(self, backbone: Backbone, hypernetwork: MENDHyperNetwork, config: MENDConfig) -> None:
        if not bool(hypernetwork.trained):
            raise ValueError("the MEND hypernetwork is untrained")
        self.backbone = backbone
        self.hypernetwork = hypernetwork
        self.config = config
        self.linears = edited_linears(backbone, backbone.last_layers(config.layers))
        missing = sorted(set(hypernetwork.names) ^ {lin.name for lin in self.linears})
        if missing:
            raise ValueError(
                f"the hypernetwork was trained for other linears than this backbone's: {missing}"
            )
        self.updates: dict[str, FactorUpdate] = {}

    @contextmanager
    def answering(self) -> Iterator[AnsweringModel]:
        with updates_applied(self.linears, self.updates):
            yield self.backbone

    def restore(self) -> None:
        self.updates = {}

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        start = time.perf_counter()
        eos = self.backbone.encoder.tokenizer.eos_token_id
        if self.config.append_eos and eos is not None:
            inputs = append_eos(inputs, eos)
        with self.answering():
            factors = gradient_factors(
                self.linears, lambda: self.backbone(inputs), inputs["labels"], inputs["attention_mask"]
            )
        training = self.hypernetwork.training
        self.hypernetwork.eval()  # editing never moves the normalisation statistics
        try:
            with torch.no_grad():
                new = self.hypernetwork(factors)
        finally:
            self.hypernetwork.train(training)
        self.updates = {
            name: self.updates[name].then(update) if name in self.updates else update
            for name, update in new.items()
        }
        with self.answering() as model, torch.no_grad():
            success = bool(exact_match(model(inputs), inputs["labels"]).all())
        return EditReport(1, time.perf_counter() - start, success)
