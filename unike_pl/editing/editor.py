"""UniKE's editor: intrinsic neurons and latent knowledge in the same last layers, tied by the encoders.

Method variants are configurations of one editor:
    T-Patcher             intrinsic=IntrinsicConfig(neurons=1, layers=1, beta=0), nothing else
    intrinsic only        intrinsic=IntrinsicConfig(beta=0), latent=None
    IKE                   in-context knowledge (demonstrations + the new fact in the prompt) only
    latent IKE only       intrinsic=None, latent=LatentConfig(alpha=<fixed>)
    intrinsic + IKE       intrinsic=IntrinsicConfig(beta=0) and in-context knowledge
    both, no collaboration intrinsic=IntrinsicConfig(beta=0), latent=LatentConfig(alpha=<fixed>)
    UniKE                 intrinsic=IntrinsicConfig(beta>0), latent=LatentConfig(alpha=None)
    LDKE's localized edit UniKE with `localization`: each edit's neurons go into the layers that carry
                          its fact (the top of the edited layers by a layer scorer), not into all of them
Nothing of the base model changes: an edit adds patches and knowledge, `restore` drops them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unike_pl.backbones.encoding import EXAMPLES, append_eos
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.base import AnsweringModel, Editor, EditReport
from unike_pl.editing.context import ContextView, InContextKnowledge
from unike_pl.editing.latent import KnowledgeInjection, LayerKnowledge
from unike_pl.editing.neurons import NeuronBank, new_patch
from unike_pl.editing.tail import TailRunner
from unike_pl.knowledge.encoders import DisentangledEncoders
from unike_pl.knowledge.mining import extract_states
from unike_pl.ldke.localization import LocalizationConfig, locate
from unike_pl.losses import answer_loss
from unike_pl.metrics.scorers import exact_match


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
    """The activation and memory hinge losses count as met below this value."""
    activation_margin: float = 1.0
    """The new keys' pre-activation should reach this margin on the edit's tokens."""
    memory_margin: float = 1.0
    """... and stay below minus this margin on the memory of unrelated FFN inputs."""
    activation_weight: float = 1.0
    memory_weight: float = 1.0
    key_noise: float = 0.01
    """Relative jitter between the new keys (identical keys would stay identical)."""
    beta: float = 0.0
    """β of the value regulation W_V^x + β·Wζ (UniKE's truthfulness collaboration); 0 turns it off."""
    layers: int | None = None
    """Neurons go into the last `layers` of the edited layers only (T-Patcher: 1); None: all of them."""


class TruthShift(nn.Module):
    """β·Wζ: the truthful direction ζ mapped to the model's hidden size by a W trained with the edit."""

    def __init__(self, zeta: torch.Tensor, output: int, beta: float) -> None:
        super().__init__()
        self.register_buffer("zeta", zeta.detach().clone().float())
        self.map = nn.Parameter(torch.zeros(output, len(zeta), device=zeta.device))
        self.beta = beta

    def forward(self) -> torch.Tensor:
        return self.beta * (self.map @ self.zeta)


class UniKEEditor(Editor):
    """Applies edits to a frozen backbone (the last `layers`), keeps them while `active`, restores it."""

    def __init__(
        self,
        backbone: Backbone,
        layers: Sequence[int],
        intrinsic: IntrinsicConfig | None,
        injection: KnowledgeInjection | None,
        encoders: DisentangledEncoders | None,
        ffn_memory: Mapping[int, torch.Tensor] | None,
        fast_tail: bool = True,
        seed: int = 0,
        in_context: InContextKnowledge | None = None,
        localization: LocalizationConfig | None = None,
    ) -> None:
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
        self.neuron_layers = (
            self.layers[-intrinsic.layers :] if intrinsic and intrinsic.layers else self.layers
        )
        self.ffn_memory = {
            layer: states.to(backbone.model.device) for layer, states in (ffn_memory or {}).items()
        }
        self.localization = localization
        self.bank = NeuronBank(backbone)
        self.fast_tail = fast_tail
        self.generator = torch.Generator().manual_seed(seed)

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

    def edit(self, inputs: Mapping[str, Any]) -> EditReport:
        """Apply one edit; `inputs` is the encoded edit example (a batch of one: image, prompt, target)."""
        start = time.perf_counter()
        if self.in_context is not None:
            self.in_context.add(inputs[EXAMPLES][0])
        if self.injection is not None:
            # The edit's own fact joins the knowledge memory, read by the unedited model like the rest.
            states = extract_states(self.backbone, self.layers, inputs)
            self.injection.add(
                {layer: LayerKnowledge(states[layer]["sem"], states[layer]["last"]) for layer in self.layers}
            )
        steps, success, layers = 0, True, None
        if self.intrinsic is not None:
            layers = self.neuron_layers
            if self.localization is not None:  # on the unedited model: where the fact is held now
                layers = locate(self.backbone, inputs, self.neuron_layers, self.localization)
            # The neurons learn the answer and that it ends there: without EOS they keep firing after it
            # and greedy decoding repeats the target.
            eos = self.backbone.encoder.tokenizer.eos_token_id
            steps, success = self._train_neurons(
                append_eos(inputs, eos) if eos is not None else inputs, layers
            )
        else:
            with self.answering() as model, torch.no_grad():
                success = bool(exact_match(model(inputs), inputs["labels"]).all())
        return EditReport(steps, time.perf_counter() - start, success, layers)

    def _train_neurons(self, inputs: Mapping[str, torch.Tensor], layers: Sequence[int]) -> tuple[int, bool]:
        config = self.intrinsic
        patches = {layer: new_patch(self.backbone, layer, config.neurons) for layer in layers}
        for layer, patch in patches.items():
            if config.beta > 0:
                zeta = self.encoders.truthful_direction(layer).to(patch.values.device)
                patch.value_shift = TruthShift(zeta, patch.values.shape[1], config.beta)
            self.bank.add(layer, patch)
        labels = inputs["labels"]
        # Positions whose logits predict the target tokens: where the new neurons must fire.
        targets = (labels[0, 1:] != -100).nonzero().flatten()
        tail = TailRunner(self.backbone, min(layers)) if self.fast_tail else None
        with self.active(), torch.enable_grad():
            prefix = tail.capture(inputs) if tail is not None else None

            def logits() -> torch.Tensor:
                return tail.logits(prefix) if tail is not None else self.backbone(inputs)

            with torch.no_grad():  # the zero patches change nothing; this reads the FFN inputs
                logits()
            for layer, patch in patches.items():
                patch.init_keys(self._edit_queries(layer, targets).mean(0), config.key_noise, self.generator)
            params = [p for patch in patches.values() for p in patch.parameters()]
            optimizer = torch.optim.Adam(params, lr=config.learning_rate)
            for step in range(config.max_steps):
                step_logits = logits()
                constraints = self._neuron_losses(patches, targets)
                # Predicting the target is not enough: neurons that also fire on unrelated inputs
                # (the memory) would break locality, so training goes on until they are quiet there.
                met = float(constraints.detach()) <= config.constraint_tolerance
                if config.stop_early and met and bool(exact_match(step_logits, labels).all()):
                    return step, True
                loss = answer_loss(step_logits, labels) + constraints
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                return config.max_steps, bool(exact_match(logits(), labels).all())

    def _edit_queries(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """FFN inputs of the (single) edit sample at `positions`, (positions, hidden)."""
        queries = self.bank.queries[layer]
        return queries.reshape(-1, queries.shape[-1])[positions].float()  # some FFNs see (batch*seq, hidden)

    def _neuron_losses(self, patches: Mapping[int, nn.Module], targets: torch.Tensor) -> torch.Tensor:
        """T-Patcher's losses: fire on the edit's target positions, stay silent on the memory."""
        config = self.intrinsic
        total = torch.zeros((), device=self.backbone.model.device)
        for layer, patch in patches.items():
            on_edit = patch.pre_activation(self._edit_queries(layer, targets))
            total = total + config.activation_weight * (config.activation_margin - on_edit).relu().mean()
            if layer in self.ffn_memory:
                on_memory = patch.pre_activation(self.ffn_memory[layer].float())
                total = total + config.memory_weight * (on_memory + config.memory_margin).relu().mean()
        return total
