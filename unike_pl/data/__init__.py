"""MMEdit data: reading and validating the benchmark's files, the five evaluation cases, batching."""

from unike_pl.data.cases import EditCollator, EditSample, MMEditDataset, build_cases
from unike_pl.data.datamodule import MMEditDataModule
from unike_pl.data.mmedit import EditRecord, MMEditFormatError, MMEditSplit, MMEditWarning, read_mmedit

__all__ = [
    "EditCollator",
    "EditRecord",
    "EditSample",
    "MMEditDataModule",
    "MMEditDataset",
    "MMEditFormatError",
    "MMEditSplit",
    "MMEditWarning",
    "build_cases",
    "read_mmedit",
]
