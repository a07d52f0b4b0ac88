"""unike_pl: multimodal knowledge editing (UniKE, LDKE and baselines) on PyTorch Lightning."""

__version__ = "0.1.0"
