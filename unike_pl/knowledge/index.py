"""Nearest-neighbour search over knowledge keys by cosine similarity (FAISS: exact or inverted-file, on the
CPU or on this process's GPU).

On a GPU the index takes and returns CUDA tensors (FAISS's torch bridge), so a retrieval never goes through
host memory; on the CPU queries are copied to the host once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata

import faiss
import faiss.contrib.torch_utils  # noqa: F401  (lets FAISS indexes take torch tensors, CUDA ones on a GPU)
import torch
import torch.nn.functional as F

from unike_pl.errors import UserError
from unike_pl.settings import require_positive

INDEX_DEVICES = ("auto", "cpu", "gpu")
INDEX_KINDS = ("flat", "ivf")


@dataclass
class IndexConfig:
    """How the knowledge keys are searched."""

    device: str = "auto"
    """auto: this process's GPU when the model runs on CUDA and FAISS has GPU support, else the CPU;
    cpu; gpu (an error where FAISS sees no GPU)."""
    kind: str = "flat"
    """flat: exact inner-product search; ivf: an inverted file (approximate, for memories past ~100k rows)."""
    lists: int | None = None
    """ivf: clusters of the inverted file; None takes 4·√rows."""
    probes: int = 16
    """ivf: clusters searched per query (as many as `lists` makes the search exact)."""

    def __post_init__(self) -> None:
        if self.device not in INDEX_DEVICES:
            raise UserError(f"index.device must be one of {', '.join(INDEX_DEVICES)}, got {self.device!r}")
        if self.kind not in INDEX_KINDS:
            raise UserError(f"index.kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        require_positive("index", lists=self.lists, probes=self.probes)


def gpu_available() -> bool:
    """Whether FAISS can place an index on a GPU (faiss-gpu on a machine without one reports 0)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_packages() -> list[str]:
    """The installed distributions that provide the `faiss` module (faiss-cpu, faiss-gpu, faiss-gpu-cu12…)."""
    found = {(dist.metadata["Name"] or "").lower().replace("_", "-") for dist in metadata.distributions()}
    return sorted(name for name in found if name == "faiss" or name.startswith("faiss-"))


def check_faiss_install(packages: list[str] | None = None) -> None:
    """Refuse two FAISS packages side by side: they write the same files, and which one's `faiss` module
    survived the second install is a matter of luck."""
    packages = faiss_packages() if packages is None else packages
    if len(packages) > 1:
        raise UserError(
            f"several FAISS packages are installed ({', '.join(packages)}); they overwrite each other's "
            "files. Keep one: `pip uninstall -y " + " ".join(packages) + "` and then `pip install "
            "faiss-cpu` (CPU) or `pip install faiss-gpu` (GPU; it also runs its CPU indexes)"
        )


def index_gpu(config: IndexConfig, device: torch.device | None) -> int | None:
    """The GPU the index goes on (that of `device`, the model's, so each process uses its own), or None for
    the CPU."""
    on_cuda = device is not None and device.type == "cuda"
    if config.device == "cpu" or (config.device == "auto" and not (on_cuda and gpu_available())):
        return None
    if not gpu_available():
        raise UserError(
            "index.device is gpu but FAISS sees no GPU (the faiss-cpu package, or no CUDA device): "
            "install faiss-gpu on a GPU machine, or set index.device to auto or cpu"
        )
    return (device.index or 0) if on_cuda else 0


class CosineIndex:
    """Inner-product search over L2-normalised keys; ids are row numbers of `keys`."""

    def __init__(
        self, keys: torch.Tensor, config: IndexConfig | None = None, device: torch.device | None = None
    ) -> None:
        """
        Args:
            keys: (count, dim) vectors to search.
            config: exact or inverted-file search, and where.
            device: the device of the model that queries (auto places the index on its GPU).
        """
        if keys.dim() != 2 or len(keys) == 0:
            raise ValueError(
                f"an index needs a non-empty (count, dim) key matrix, got shape {tuple(keys.shape)}"
            )
        config = config or IndexConfig()
        self.dim = keys.shape[1]
        normalised = _normalised(keys).cpu()
        index = _cpu_index(config, normalised)
        self.gpu = index_gpu(config, device)
        if self.gpu is not None:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, self.gpu, index)
        self.index = index

    @property
    def on_gpu(self) -> bool:
        return self.gpu is not None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine scores and ids (batch, min(k, len)) of the nearest keys, best first: on this index's GPU
        when it has one, else on the CPU."""
        where = torch.device("cuda", self.gpu) if self.on_gpu else torch.device("cpu")
        return self.index.search(_normalised(queries.to(where)), min(k, len(self)))


def _cpu_index(config: IndexConfig, keys: torch.Tensor) -> faiss.Index:
    """The index over normalised `keys` (count, dim), built (and for ivf trained) on the CPU."""
    count, dim = keys.shape
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        lists = config.lists or max(1, round(4 * math.sqrt(count)))
        if lists > count:
            raise UserError(
                f"index.lists is {lists} but the memory has {count} keys: an inverted file needs at least "
                "one key per list"
            )
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
        index.nprobe = min(config.probes, lists)
    index.add(keys)
    return index


def _normalised(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.detach().float(), dim=-1).contiguous()
