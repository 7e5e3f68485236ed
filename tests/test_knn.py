"""The shared nearest-neighbour search: exact and IVF against brute force, and own-image exclusion."""
import numpy as np
import pytest
import torch

from qarad.detection import knn
from qarad.detection.knn import NearestNeighbours, SearchConfig


def _data(rows=600, dim=12, queries=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g), torch.randn(queries, dim, generator=g)


def test_exact_search_matches_cdist():
    memory, q = _data()
    dist, rows = NearestNeighbours(memory, config=SearchConfig("exact")).search(q)
    ref = torch.cdist(q, memory)
    assert torch.allclose(dist, ref.min(1).values, atol=1e-4)
    assert torch.equal(rows, ref.argmin(1))


def test_excluding_a_source_skips_exactly_its_rows():
    memory, q = _data()
    source = torch.arange(len(memory)) % 5  # five "images"
    own = torch.arange(len(q)) % 5
    dist, rows = NearestNeighbours(memory, source, SearchConfig("exact")).search(q, own)
    ref = torch.cdist(q, memory)
    ref[source[None, :] == own[:, None]] = float("inf")
    assert torch.allclose(dist, ref.min(1).values, atol=1e-4)
    assert (source[rows] != own).all()


def test_exclusion_falls_back_to_exact_when_all_candidates_are_own_rows():
    g = torch.Generator().manual_seed(1)
    near = torch.randn(40, 6, generator=g) * 0.01  # source 0: a tight cluster around the queries
    far = torch.randn(40, 6, generator=g) + 10.0  # source 1: far away
    memory, source = torch.cat([near, far]), torch.tensor([0] * 40 + [1] * 40)
    q = torch.zeros(3, 6)
    dist, rows = NearestNeighbours(memory, source, SearchConfig("exact")).search(q, torch.zeros(3, dtype=torch.int64))
    assert (rows >= 40).all()
    assert torch.allclose(dist, torch.cdist(q, far).min(1).values, atol=1e-4)


def test_ivf_is_close_to_exact_and_never_below_it(monkeypatch):
    monkeypatch.setattr(knn, "MIN_IVF_ROWS", 100)
    memory, q = _data(rows=3000, dim=16, queries=200)
    exact = NearestNeighbours(memory, config=SearchConfig("exact")).search(q)[0]
    approx = NearestNeighbours(memory, config=SearchConfig("ivf", nprobe=8)).search(q)[0]
    assert (approx >= exact - 1e-4).all()  # an approximate search can only miss the nearest row
    assert float(np.median((approx - exact).numpy())) < 1e-4  # and finds it for most queries


@pytest.mark.parametrize("excluding", [False, True])
def test_hnsw_is_close_to_exact_and_never_below_it(monkeypatch, excluding):
    monkeypatch.setattr(knn, "MIN_IVF_ROWS", 100)
    memory, q = _data(rows=3000, dim=16, queries=200)
    source = torch.arange(len(memory)) % 7
    own = torch.arange(len(q)) % 7 if excluding else None
    exact = NearestNeighbours(memory, source, SearchConfig("exact")).search(q, own)[0]
    index = NearestNeighbours(memory, source, SearchConfig("hnsw", ef_search=32))
    assert index.approximate
    approx, rows = index.search(q, own)
    assert (approx >= exact - 1e-4).all()
    assert float(np.median((approx - exact).numpy())) < 1e-4
    if excluding:
        assert (source[rows] != own).all()


def test_search_config_is_checked():
    with pytest.raises(ValueError, match="unknown search mode"):
        SearchConfig("annoy")
    with pytest.raises(ValueError, match="nprobe"):
        SearchConfig("ivf", nprobe=0)
    with pytest.raises(ValueError, match="hnsw"):
        SearchConfig("hnsw", ef_search=0)


@pytest.mark.parametrize("excluding", [False, True])
def test_refine_makes_the_largest_distances_exact(monkeypatch, excluding):
    monkeypatch.setattr(knn, "MIN_IVF_ROWS", 100)
    memory, q = _data(rows=2000, dim=16, queries=400, seed=3)
    source = torch.arange(len(memory)) % 7
    own = torch.arange(len(q)) % 7 if excluding else None
    ref = torch.cdist(q, memory)
    if excluding:
        ref[source[None, :] == own[:, None]] = float("inf")
    exact = ref.min(1).values
    coarse = NearestNeighbours(memory, source, SearchConfig("ivf", nprobe=1)).search(q, own)[0]
    refined = NearestNeighbours(memory, source, SearchConfig("ivf", nprobe=1, refine=0.1)).search(q, own)[0]
    assert (coarse > exact + 1e-4).any()  # the coarse search misses some nearest rows
    top = torch.topk(coarse, 40).indices  # the 10% largest IVF distances are searched again exactly
    assert torch.allclose(refined[top], exact[top], atol=1e-4)
    assert exact.max() - 1e-4 <= refined.max() <= coarse.max() + 1e-4
    assert (refined >= exact - 1e-4).all()
    with pytest.raises(ValueError, match="refine"):
        SearchConfig(refine=1.5)


def test_refine_per_view_picks_its_share_in_every_view(monkeypatch):
    monkeypatch.setattr(knn, "MIN_IVF_ROWS", 100)
    memory, q = _data(rows=2000, dim=16, queries=400, seed=4)
    q[:200] *= 0.2  # view 0: every query near the bank; view 1: far from it
    exact = torch.cdist(q, memory).min(1).values
    coarse = NearestNeighbours(memory, config=SearchConfig("ivf", nprobe=1)).search(q)[0]
    refined = NearestNeighbours(memory, config=SearchConfig("ivf", nprobe=1, refine=0.05)).search(q, per_view=200)[0]
    for start in (0, 200):  # the 10 largest IVF distances of each view are exact, not only view 1's
        top = start + torch.topk(coarse[start:start + 200], 10).indices
        assert torch.allclose(refined[top], exact[top], atol=1e-4)
