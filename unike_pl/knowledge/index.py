"""Nearest-neighbour search over knowledge keys by cosine similarity (FAISS, on the GPU when there is one)."""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F


def gpu_available() -> bool:
    """Whether FAISS can place an index on a GPU (faiss-gpu on a machine without one reports 0)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class CosineIndex:
    """Exact inner-product search over L2-normalised keys; ids are row numbers of `keys`."""

    def __init__(self, keys: torch.Tensor, use_gpu: bool | None = None) -> None:
        """
        Args:
            keys: (count, dim) vectors to search.
            use_gpu: place the index on GPU 0; None does so whenever FAISS sees a GPU.
        """
        if keys.dim() != 2 or len(keys) == 0:
            raise ValueError(
                f"an index needs a non-empty (count, dim) key matrix, got shape {tuple(keys.shape)}"
            )
        self.dim = keys.shape[1]
        index = faiss.IndexFlatIP(self.dim)
        self.on_gpu = gpu_available() if use_gpu is None else use_gpu
        if self.on_gpu:
            if not gpu_available():
                raise RuntimeError("use_gpu=True but FAISS sees no GPU")
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        index.add(_normalised(keys))
        self.index = index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine scores and ids (batch, min(k, len)) of the nearest keys, best first."""
        scores, ids = self.index.search(_normalised(queries), min(k, len(self)))
        return torch.from_numpy(scores), torch.from_numpy(ids)


def _normalised(vectors: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(F.normalize(vectors.detach().float().cpu(), dim=-1).numpy())
