"""The unrelated inputs that T-Patcher's memory loss keeps new neurons silent on, as the neurons see them.

The knowledge memory stores, per edited layer, the unedited model's FFN input at the last question token of
each memory question. New neurons fire on FFN inputs of the *edited* model: where an active edit's latent
knowledge reaches a memory question (its gate lets the knowledge in), the state the neurons see is shifted,
so the margin loss must see the shifted one too. Those questions are run again through the model with the
edits applied; the others keep their stored states (the gate leaves them exactly as they were).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

import torch

from unike_pl.backbones.encoding import Example, on_device
from unike_pl.backbones.loader import Backbone
from unike_pl.editing.latent import KnowledgeInjection
from unike_pl.knowledge.states import at_positions, layer_inputs

ExampleLoader = Callable[[Sequence[int]], list[Example]]
"""Rows of the unrelated inputs -> their examples (image, question, answer), read on demand."""


class UnrelatedInputs:
    """FFN inputs of unrelated questions per edited layer, re-read where the latent knowledge reaches them."""

    def __init__(
        self,
        backbone: Backbone,
        attention: Mapping[int, torch.Tensor],
        ffn: Mapping[int, torch.Tensor],
        examples: ExampleLoader | None = None,
        batch_size: int = 64,
        reread_limit: int = 256,
    ) -> None:
        """
        Args:
            backbone: the edited model.
            attention: per layer, the unedited pre-attention state at each question's last token, (count,
                hidden): what the gate reads.
            ffn: per layer, the unedited FFN input there, (count, hidden): what the neurons read.
            examples: loads the questions to run again; None never re-reads (stored states only).
            batch_size: questions per forward when re-reading.
            reread_limit: at most this many reached questions are re-read per edit (the first ones in a
                fixed random order); reached ones beyond it are left out of the margin loss rather than
                seen with stale states. A gate keeps the reached ones few (about 170 of 2,000 world
                questions per edit); a fixed α reaches all of them.
        """
        device = backbone.model.device
        self.backbone = backbone
        self.attention = {layer: states.to(device) for layer, states in attention.items()}
        self.ffn = {layer: states.to(device).float() for layer, states in ffn.items()}
        self.examples = examples
        self.batch_size = batch_size
        self.reread_limit = reread_limit
        count = len(next(iter(self.ffn.values())))
        self.order = torch.randperm(count, generator=torch.Generator().manual_seed(0))

    def reached(self, injection: KnowledgeInjection | None) -> torch.Tensor:
        """Rows whose gate opens for some active edit (it reads the unedited states, which are stored), in
        the fixed random order."""
        if injection is None or not injection.edits:
            return torch.zeros(0, dtype=torch.long)
        opened = (injection.read_gate(self.attention).alpha > 0).cpu()
        return self.order[opened[self.order]]

    @torch.no_grad()
    def seen(
        self,
        injection: KnowledgeInjection | None,
        edited: Callable[[], AbstractContextManager],
    ) -> tuple[dict[int, torch.Tensor], int]:
        """The FFN inputs the neurons see, (rows, hidden) per layer: the stored ones of the questions the
        knowledge does not reach, and the reached ones re-read under `edited` (a context in which the
        backbone runs with the active edits), up to `reread_limit`; and how many were reached."""
        reached = self.reached(injection)
        if len(reached) == 0:
            return self.ffn, 0
        if self.examples is None:
            raise ValueError(
                "the latent knowledge reaches memory questions, but no loader was given to re-read them"
            )
        rows = reached[: self.reread_limit]
        keep = torch.ones(len(self.order), dtype=torch.bool)
        keep[reached] = False
        layers, device = list(self.ffn), self.backbone.model.device
        reread = {layer: torch.zeros(len(rows), self.ffn[layer].shape[1], device=device) for layer in layers}
        examples = self.examples(rows.tolist())
        with edited(), layer_inputs(self.backbone, layers) as captured:
            for group in by_modality(examples):  # a batch is all multimodal or all text-only
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start : start + self.batch_size]
                    encoded = on_device(self.backbone.encoder.encode([examples[i] for i in chunk]), device)
                    self.backbone(encoded)
                    last = encoded["prompt_length"] - 1
                    for layer in layers:
                        reread[layer][chunk] = at_positions(captured["ffn"][layer], last).float()
        keep = keep.to(device)
        return {layer: torch.cat([self.ffn[layer][keep], reread[layer]]) for layer in layers}, len(reached)


def by_modality(examples: Sequence[Example]) -> list[list[int]]:
    """Positions of the examples with an image and of those without (empty groups left out)."""
    groups = [
        [i for i, ex in enumerate(examples) if (ex.image is not None) == image] for image in (True, False)
    ]
    return [group for group in groups if group]
