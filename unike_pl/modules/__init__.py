"""LightningModules: thin compositions of backbones, methods and metrics."""

from unike_pl.modules.backbone_module import BackboneModule
from unike_pl.modules.disentangle import DisentangleModule
from unike_pl.modules.edit_loop import EditingLoop
from unike_pl.modules.editing import EditingModule
from unike_pl.modules.finetune import FineTuneModule
from unike_pl.modules.ldke import LDKEModule
from unike_pl.modules.mend import MENDModule
from unike_pl.modules.pre_edit import PreEditEvaluation
from unike_pl.modules.router import DisentanglementClassifierModule
from unike_pl.modules.serac import SERACModule

__all__ = [
    "BackboneModule",
    "DisentangleModule",
    "DisentanglementClassifierModule",
    "EditingLoop",
    "EditingModule",
    "FineTuneModule",
    "LDKEModule",
    "MENDModule",
    "PreEditEvaluation",
    "SERACModule",
]
