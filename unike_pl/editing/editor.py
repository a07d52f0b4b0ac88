"""UniKE's editor: intrinsic neurons and latent knowledge in the same last layers, tied by the encoders.

Method variants are configurations of one editor:
    T-Patcher             intrinsic=IntrinsicConfig(neurons=1, layers=1, beta=0), nothing else
    intrinsic only        intrinsic=IntrinsicConfig(beta=0), latent=None
    IKE                   in-context knowledge only: k demonstrations retrieved once per edit by its new
                          fact, and the fact, written before every input (`unike_pl.editing.context`)
    latent IKE only       intrinsic=None, latent=LatentConfig(alpha=<fixed>)
    intrinsic + IKE       intrinsic=IntrinsicConfig(beta=0) and in-context knowledge
    both, no collaboration intrinsic=IntrinsicConfig(beta=0), latent=LatentConfig(alpha=<fixed>)
    UniKE                 intrinsic=IntrinsicConfig(beta>0), latent=LatentConfig(alpha=None)
    LDKE's localized edit UniKE with a `choose_layers` (LDKE's fast localization): each edit's neurons
                          go into the layers that carry its fact, not into all of them
Nothing of the base model changes: an edit adds patches and knowledge, `restore` drops them all.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.encoding import EXAMPLES, append_eos
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.base import AnsweringModel, Editor, EditReport
from unike_pl.editing.context import ContextView, InContextKnowledge
from unike_pl.editing.latent import KnowledgeInjection
from unike_pl.editing.neurons import NeuronBank, NeuronPatch, new_patch
from unike_pl.editing.tail import TailRunner
from unike_pl.editing.unrelated import UnrelatedInputs
from unike_pl.knowledge.encoders import ZETA_KINDS, DisentangledEncoders
from unike_pl.knowledge.mining import extract_states
from unike_pl.losses import answer_loss, neuron_margin_losses
from unike_pl.metrics.scorers import exact_match
from unike_pl.settings import require_positive

LayerChooser = Callable[[Backbone, Mapping[str, Any], Sequence[int]], list[int]]
"""(backbone, encoded edit, candidate layers) -> the layers this edit's neurons go into (LDKE's
localization is one); it runs on the unedited model."""


ZETA_MAPS = ("fitted", "learned")
"""How W_ζ is obtained: fitted in disentangling (frozen), or learned per edit (the released code)."""


@dataclass
class IntrinsicConfig:
    """Extra FFN key-value neurons trained per edit (UniKE's assimilation, T-Patcher style)."""

    neurons: int = 10
    """Key-value pairs added to each edited layer's FFN per edit."""
    learning_rate: float = 0.01
    """Adam learning rate of the new parameters."""
    max_steps: int = 40
    """Optimisation step cap."""
    stop_early: bool = True
    """Stop as soon as every target token is predicted and the neuron constraints hold (off: always
    `max_steps`, as benchmarks need)."""
    constraint_tolerance: float = 0.01
    """The activation and memory losses count as met below this value."""
    activation_margin: float = 1.0
    """Every new key's pre-activation should reach this margin on the edit's target positions."""
    memory_margin: float = 1.0
    """... stay below minus this margin on every unrelated FFN input of the memory ..."""
    memory_gap: float = 0.0
    """... and stay this far below its activation on the edit (T-Patcher's first memory term). T-Patcher
    uses 3 on its scale; here, with keys started at activation 1, a gap of 1 or 3 kept neurons from firing
    on rephrases (intrinsic only, 40 world edits: T-Gen 27.5 / 30.0 against 67.5 with 0)."""
    activation_weight: float = 1.0
    memory_weight: float = 1.0
    key_noise: float = 0.01
    """Relative jitter between the new keys (identical keys would stay identical)."""
    beta: float = 0.0
    """β of the value regulation W_V^x + β·ζ' (UniKE's truthfulness collaboration); 0 turns it off."""
    zeta: str = "truthful"
    """The direction ζ: truthful (UniKE), or the paper's Figure 4c controls, semantic (the same recipe in
    the semantic space) and random (a seeded random vector of ζ's norm)."""
    zeta_map: str = "fitted"
    """W_ζ: fitted (least squares in disentangling, frozen while editing: ζ' is a fixed direction) or
    learned (a randomly initialised map trained with each edit's neurons, as the released code does)."""
    layers: int | None = None
    """Neurons go into the last `layers` of the edited layers only (T-Patcher: 1); None: all of them."""

    def __post_init__(self) -> None:
        require_positive(
            "intrinsic",
            neurons=self.neurons,
            learning_rate=self.learning_rate,
            max_steps=self.max_steps,
            layers=self.layers,
        )
        if self.zeta not in ZETA_KINDS:
            raise ValueError(f"intrinsic.zeta must be one of {', '.join(ZETA_KINDS)}, got {self.zeta!r}")
        if self.zeta_map not in ZETA_MAPS:
            raise ValueError(
                f"intrinsic.zeta_map must be one of {', '.join(ZETA_MAPS)}, got {self.zeta_map!r}"
            )


class FixedShift(nn.Module):
    """β·ζ' with ζ' = W_ζ ζ fitted in disentangling: a fixed (output,) vector on every new value row."""

    def __init__(self, direction: torch.Tensor, beta: float) -> None:
        super().__init__()
        self.register_buffer("shift", beta * direction.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.shift


class LearnedShift(nn.Module):
    """β·W ζ with W (output, dim) trained with the edit's neurons, initialised as `nn.Linear` does
    (uniform in ±1/√dim) from the edit's generator."""

    def __init__(self, zeta: torch.Tensor, output: int, beta: float, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("zeta", zeta.detach().clone().float())
        bound = 1 / len(zeta) ** 0.5
        start = (torch.rand(output, len(zeta), generator=generator) * 2 - 1) * bound
        self.map = nn.Parameter(start.to(zeta.device))
        self.beta = beta

    def forward(self) -> torch.Tensor:
        return self.beta * (self.map @ self.zeta)


def edit_generator(seed: int, inputs: Mapping[str, Any]) -> torch.Generator:
    """The random numbers of one edit (the neurons' key jitter, a learned W_ζ's start), seeded by `seed` and
    the edit itself (its token ids, labels and pixels): an edit's result depends on its record and the
    settings only, not on which edits came before it, on which rank it runs, or on a resume."""
    digest = hashlib.sha256(str(seed).encode())
    for key in ("input_ids", "labels", "pixel_values"):
        if isinstance(inputs.get(key), torch.Tensor):
            digest.update(inputs[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little"))


class UniKEEditor(Editor):
    """Applies edits to a frozen backbone (the last `layers`), keeps them while `active`, restores it."""

    def __init__(
        self,
        backbone: Backbone,
        layers: Sequence[int],
        intrinsic: IntrinsicConfig | None,
        injection: KnowledgeInjection | None,
        encoders: DisentangledEncoders | None,
        unrelated: UnrelatedInputs | None,
        fast_tail: bool = True,
        seed: int = 0,
        in_context: InContextKnowledge | None = None,
        neuron_layers: Sequence[int] | None = None,
        choose_layers: LayerChooser | None = None,
    ) -> None:
        """
        Args:
            layers: the edited layers: where the latent knowledge is injected (and read from).
            unrelated: the FFN inputs the new neurons must stay silent on (T-Patcher's memory).
            neuron_layers: where the new neurons go (a subset of `layers`); None: all of them.
            choose_layers: picks, per edit, the neuron layers among `neuron_layers` (LDKE's localization).
        """
        if intrinsic is None and injection is None and in_context is None:
            raise ValueError("an editor needs intrinsic neurons, latent or in-context knowledge")
        if intrinsic is not None and intrinsic.beta > 0 and encoders is None:
            raise ValueError("beta > 0 regulates values with ζ, which needs trained encoders")
        self.backbone = backbone
        self.layers = list(layers)
        self.intrinsic = intrinsic
        self.injection = injection
        self.encoders = encoders
        self.in_context = in_context
        self.neuron_layers = list(neuron_layers) if neuron_layers is not None else self.layers
        self.choose_layers = choose_layers
        self.unrelated = unrelated
        self.bank = NeuronBank(backbone)
        self.fast_tail = fast_tail
        self.seed = seed

    @contextmanager
    def active(self) -> Iterator[None]:
        """The backbone answers with every edit applied so far."""
        with ExitStack() as stack:
            stack.enter_context(self.bank.attached())
            if self.injection is not None:
                stack.enter_context(self.injection.attached())
            yield

    @contextmanager
    def answering(self) -> Iterator[AnsweringModel]:
        with self.active():
            yield self.backbone if self.in_context is None else ContextView(self.backbone, self.in_context)

    def restore(self) -> None:
        """Drop every edit: the backbone is exactly what it was before the first one."""
        self.bank.clear()
        if self.injection is not None:
            self.injection.clear()
        if self.in_context is not None:
            self.in_context.clear()

    @torch.no_grad()
    def gate_values(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """α of each input of `batch` (batch,) under the edits so far, and its relevance to the edit it reads
        per edited layer (keys: "alpha" and the layer numbers); None without latent knowledge."""
        if self.injection is None or not self.injection.edits:
            return None
        with self.answering() as model:
            model(batch)
        reading = self.injection.last_reading
        return {
            "alpha": reading.alpha.float().cpu(),
            **{str(layer): value.float().cpu() for layer, value in reading.relevance.items()},
        }

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        """Apply one edit; `inputs` is the encoded edit example (a batch of one: image, prompt, target)."""
        start = time.perf_counter()
        if self.in_context is not None:
            self.in_context.add(inputs[EXAMPLES][0])
        if self.injection is not None:
            # The edit's knowledge set, retrieved once from the unedited model's states of the edit input.
            self.injection.add(
                self.injection.knowledge_of(extract_states(self.backbone, self.layers, inputs))
            )
        steps, success, layers, reached = 0, True, None, None
        if self.intrinsic is not None:
            layers = self.neuron_layers
            if self.choose_layers is not None:  # on the unedited model: where the fact is held now
                layers = self.choose_layers(self.backbone, inputs, layers)
            # The neurons learn the answer and that it ends there: without EOS they keep firing after it
            # and greedy decoding repeats the target.
            eos = self.backbone.encoder.tokenizer.eos_token_id
            steps, success, reached = self._train_neurons(
                append_eos(inputs, eos) if eos is not None else inputs,
                layers,
                edit_generator(self.seed, inputs),
            )
        else:
            with self.answering() as model, torch.no_grad():
                success = bool(exact_match(model(inputs), inputs["labels"]).all())
        return EditReport(steps, time.perf_counter() - start, success, layers, reached)

    def _value_shift(
        self, layer: int, output: int, device: torch.device, generator: torch.Generator
    ) -> nn.Module:
        config = self.intrinsic
        if config.zeta_map == "fitted":
            direction = self.encoders.value_direction(layer, config.zeta, self.seed)
            return FixedShift(direction.to(device), config.beta)
        zeta = self.encoders.direction(layer, config.zeta, self.seed).to(device)
        return LearnedShift(zeta, output, config.beta, generator)

    def _train_neurons(
        self, inputs: Mapping[str, torch.Tensor], layers: Sequence[int], generator: torch.Generator
    ) -> tuple[int, bool, int | None]:
        config = self.intrinsic
        memory, reached = (
            ({}, None) if self.unrelated is None else self.unrelated.seen(self.injection, self.active)
        )
        patches = {layer: new_patch(self.backbone, layer, config.neurons) for layer in layers}
        for layer, patch in patches.items():
            if config.beta > 0:
                patch.value_shift = self._value_shift(
                    layer, patch.values.shape[1], patch.values.device, generator
                )
            self.bank.add(layer, patch)
        labels = inputs["labels"]
        # Positions whose logits predict the target tokens: where the new neurons must fire.
        targets = (labels[0, 1:] != -100).nonzero().flatten()
        # The tail starts where the edits start: the first neuron layer, or the first knowledge layer (whose
        # gate read replays the layers from there).
        first = min(layers) if self.injection is None else min(*layers, *self.layers)
        tail = TailRunner(self.backbone, first) if self.fast_tail else None
        with self.active(), torch.enable_grad():
            prefix = tail.capture(inputs) if tail is not None else None

            def logits() -> torch.Tensor:
                return tail.logits(prefix) if tail is not None else self.backbone(inputs)

            with torch.no_grad():  # the zero-valued patches change nothing here; this reads the FFN inputs
                logits()
            for layer, patch in patches.items():
                patch.init_keys(self._edit_queries(layer, targets).mean(0), config.key_noise, generator)
            params = [p for patch in patches.values() for p in patch.parameters()]
            optimizer = torch.optim.Adam(params, lr=config.learning_rate)
            for step in range(config.max_steps):
                step_logits = logits()
                constraints = self._neuron_losses(patches, targets, memory)
                # Predicting the target is not enough: neurons that also fire on unrelated inputs
                # (the memory) would break locality, so training goes on until they are quiet there.
                met = float(constraints.detach()) <= config.constraint_tolerance
                if config.stop_early and met and bool(exact_match(step_logits, labels).all()):
                    return step, True, reached
                loss = answer_loss(step_logits, labels) + constraints
                if not torch.isfinite(loss):  # diverged: stop (the loop marks the edit non-finite)
                    return step, False, reached
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                return config.max_steps, bool(exact_match(logits(), labels).all()), reached

    def _edit_queries(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """FFN inputs of the (single) edit sample at `positions`, (positions, hidden)."""
        queries = self.bank.queries[layer]
        return queries.reshape(-1, queries.shape[-1])[positions].float()  # some FFNs see (batch*seq, hidden)

    def _neuron_losses(
        self, patches: Mapping[int, NeuronPatch], targets: torch.Tensor, memory: Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        """T-Patcher's losses: fire on the edit's target positions, stay silent on the memory."""
        config = self.intrinsic
        total = torch.zeros((), device=self.backbone.model.device)
        for layer, patch in patches.items():
            on_edit = patch.pre_activation(self._edit_queries(layer, targets))
            on_memory = patch.pre_activation(memory[layer]) if layer in memory else on_edit[:0]
            activation, silence = neuron_margin_losses(
                on_edit, on_memory, config.activation_margin, config.memory_margin, config.memory_gap
            )
            total = total + config.activation_weight * activation + config.memory_weight * silence
        return total
