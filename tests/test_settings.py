"""Bad numeric settings stop the run where they are declared, naming the setting and its value."""

from __future__ import annotations

import pytest

from tests.test_editing import random_knowledge
from unike_pl.backbones import BackboneConfig, load_backbone
from unike_pl.cli import main
from unike_pl.editing.context import ContextConfig
from unike_pl.editing.editor import IntrinsicConfig
from unike_pl.editing.finetune import FineTuneConfig
from unike_pl.editing.latent import FixedGate, KnowledgeInjection, LatentConfig
from unike_pl.editing.mend import MENDConfig
from unike_pl.knowledge.cache import MemoryConfig
from unike_pl.ldke.localization import LocalizationConfig
from unike_pl.scoring import ScoringConfig

BAD = [
    (IntrinsicConfig, {"neurons": -3}, "intrinsic.neurons = -3: must be positive"),
    (IntrinsicConfig, {"max_steps": 0}, "intrinsic.max_steps = 0: must be positive"),
    (IntrinsicConfig, {"layers": 0}, "intrinsic.layers = 0: must be positive"),
    (LatentConfig, {"top_k": 0}, "latent.top_k = 0: must be positive"),
    (ContextConfig, {"k": -1}, "in_context.k = -1: must not be negative"),
    (FineTuneConfig, {"max_steps": 0}, "finetune.max_steps = 0: must be positive"),
    (MENDConfig, {"rank": 0}, "mend.rank = 0: must be positive"),
    (LocalizationConfig, {"layers": 0}, "localization.layers = 0: must be positive"),
    (ScoringConfig, {"max_new_tokens": 0}, "scoring.max_new_tokens = 0: must be positive"),
    (lambda **kw: MemoryConfig(sources=[], **kw), {"limit": 0}, "memory.limit = 0: must be positive"),
]


@pytest.mark.parametrize(
    ("make", "values", "message"), BAD, ids=[message.split(" ")[0] for *_, message in BAD]
)
def test_a_bad_setting_is_named(make, values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make(**values)


@pytest.mark.parametrize("limit", ["-5", "0"])
def test_a_bad_record_limit_stops_the_run_before_anything_is_edited(limit):
    """(It used to edit 295 records for -5 and all 300 for 0.)"""
    with pytest.raises(ValueError, match=f"data.limit = {limit}: must be positive"):
        main(["validate", "--config", "configs/edit_vqa.yaml", "--data.init_args.limit", limit])


def test_a_top_k_past_the_memory_is_reported_once(tiny_models):
    backbone = load_backbone(BackboneConfig(str(tiny_models["blip2"]), local_files_only=True))
    layers = backbone.last_layers(2)
    with pytest.warns(UserWarning, match="latent.top_k = 40 but the knowledge memory has 30 rows") as caught:
        KnowledgeInjection(backbone, random_knowledge(backbone, layers), 40, FixedGate(1.0))
    assert len([w for w in caught if "latent.top_k" in str(w.message)]) == 1
