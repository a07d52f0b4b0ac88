"""Callbacks shared by the project's runs."""

from unike_pl.callbacks.export import ExportBridge, ExportPretrained
from unike_pl.callbacks.progress import ProgressLines
from unike_pl.callbacks.report import ResultsReport

__all__ = ["ExportBridge", "ExportPretrained", "ProgressLines", "ResultsReport"]
