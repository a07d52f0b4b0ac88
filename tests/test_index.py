"""The knowledge index: exact and inverted-file search, where it runs, and the FAISS install check."""

from __future__ import annotations

import pytest
import torch

from unike_pl.errors import UserError
from unike_pl.knowledge.index import CosineIndex, IndexConfig, check_faiss_install, faiss_packages, index_gpu

KEYS = torch.randn(400, 24, generator=torch.Generator().manual_seed(0))


def planted_queries() -> torch.Tensor:
    """Scaled, slightly moved copies of keys 17 and 140 (cosine search ignores the scale)."""
    return KEYS[[17, 140]] * 3.0 + 0.01 * torch.randn(2, 24, generator=torch.Generator().manual_seed(1))


def test_flat_index_returns_the_planted_neighbour_best_first():
    scores, ids = CosineIndex(KEYS, IndexConfig(device="cpu")).search(planted_queries(), 5)
    assert ids[:, 0].tolist() == [17, 140]
    assert torch.all(scores[:, 0] > 0.99) and torch.all(scores[:, :-1] >= scores[:, 1:])


def test_an_inverted_file_probing_every_list_is_the_exact_search():
    queries = torch.randn(30, 24, generator=torch.Generator().manual_seed(2))
    exact_scores, exact_ids = CosineIndex(KEYS, IndexConfig(kind="flat")).search(queries, 8)
    scores, ids = CosineIndex(KEYS, IndexConfig(kind="ivf", lists=10, probes=10)).search(queries, 8)
    assert torch.equal(ids, exact_ids)
    assert torch.allclose(scores, exact_scores, atol=1e-5)
    # Probing one list of ten is approximate: it still finds a key's own row, but not every neighbour.
    one = CosineIndex(KEYS, IndexConfig(kind="ivf", lists=10, probes=1))
    assert one.search(planted_queries(), 1)[1][:, 0].tolist() == [17, 140]
    assert not torch.equal(one.search(queries, 8)[1], exact_ids)


def test_index_settings_are_checked():
    with pytest.raises(ValueError, match="index.kind must be one of flat, ivf"):
        IndexConfig(kind="hnsw")
    with pytest.raises(ValueError, match="index.device must be one of auto, cpu, gpu"):
        IndexConfig(device="cuda")
    with pytest.raises(ValueError, match=r"index\.probes = 0: must be positive"):
        IndexConfig(kind="ivf", probes=0)
    with pytest.raises(ValueError, match="index.lists is 500 but the memory has 400 keys"):
        CosineIndex(KEYS, IndexConfig(kind="ivf", lists=500))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_auto_stays_on_the_cpu_without_a_gpu_and_gpu_refuses():
    assert index_gpu(IndexConfig(device="auto"), torch.device("cpu")) is None
    assert not CosineIndex(KEYS).on_gpu
    with pytest.raises(UserError, match="index.device is gpu but FAISS sees no GPU"):
        index_gpu(IndexConfig(device="gpu"), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_index_searches_cuda_queries_on_the_models_gpu():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    index = CosineIndex(KEYS, IndexConfig(device="auto"), device)
    assert index.gpu == device.index
    scores, ids = index.search(planted_queries().to(device), 5)
    assert ids.device == device and ids[:, 0].tolist() == [17, 140]


def test_two_faiss_packages_are_refused_with_the_fix():
    assert len(faiss_packages()) == 1  # this environment holds one
    check_faiss_install()
    with pytest.raises(UserError, match="faiss-cpu, faiss-gpu.*pip uninstall -y faiss-cpu faiss-gpu"):
        check_faiss_install(["faiss-cpu", "faiss-gpu"])
