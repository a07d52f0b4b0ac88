"""Model surgery for editing (no Lightning here): extra neurons, latent knowledge, the tail runner."""

from unike_pl.editing.editor import IntrinsicConfig, UniKEEditor
from unike_pl.editing.latent import LatentConfig

__all__ = ["IntrinsicConfig", "LatentConfig", "UniKEEditor"]
