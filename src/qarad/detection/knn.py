"""Nearest memory-bank row of every query patch: the one search PatchCore and the residual detector share.

The bank is small enough to search exactly on a GPU, but on 2 CPU cores an exact search of a
78k-row bank costs ~0.4 s per 256-px image. `ivf` (faiss IndexIVFFlat: the bank is split into
Voronoi cells around k-means centroids and a query scans only the `nprobe` nearest cells) is the
default; `exact` (faiss IndexFlatL2, same numbers as the brute-force torch search) stays for
small banks and for checking. `hnsw` (faiss IndexHNSWFlat: a graph walk keeping `ef_search`
candidates) is measured beside them by benchmarks/search.py. All return Euclidean distances and row
indices; an IVF or HNSW distance is never below the exact one.

Refinement (`refine` > 0): the given share of a call's queries with the largest IVF distances are
searched again exactly, per view. An IVF distance is never below the exact one, so the patches an
image score reads (the largest distances) are the ones most likely to be overestimated, and each
query left out has an exact distance no larger than the smallest refined IVF distance.

Leave-own-source-out search (training residuals that look like test residuals): the k nearest
candidates are fetched and the first whose row comes from another image is kept; the few queries
whose k candidates all come from their own image are searched again exactly, without those rows.
"""
from __future__ import annotations

import numpy as np
import torch

from ..detector_config import SEARCH_MODES, SearchConfig  # noqa: F401 (the search's config, re-exported)

ROWS_PER_LIST = 64  # IVF lists hold ~64 rows on average: nlist = rows / 64
MIN_IVF_ROWS = 4096  # below this an exact search is as fast and needs no training
EXCLUDE_CANDIDATES = 16  # candidates fetched when rows of the query's own image must be skipped


def _faiss():
    import faiss  # imported on first use: a plain import of qarad must not pull in its OpenMP runtime

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


class NearestNeighbours:
    """Index over the rows of `memory` (M, C) float32; `search` maps (N, C) queries to (dist, index)."""

    def __init__(self, memory: torch.Tensor, source: torch.Tensor | None = None,
                 config: SearchConfig = SearchConfig()):
        faiss = _faiss()
        self.config = config
        self.memory = np.ascontiguousarray(memory.detach().cpu().float().numpy())
        self.source = None if source is None else source.detach().cpu().numpy()
        rows, dim = self.memory.shape
        self.approximate = not (config.mode == "exact" or rows < MIN_IVF_ROWS)
        self._rows_and_norms = None  # (bank, squared row norms) for refinement, made on first use
        if not self.approximate:
            self.index = faiss.IndexFlatL2(dim)
        elif config.mode == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, config.hnsw_links)
            self.index.hnsw.efSearch = config.ef_search
        else:
            nlist = max(1, rows // ROWS_PER_LIST)
            quantizer = faiss.IndexFlatL2(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, nlist)
            self.index.cp.seed = config.seed
            self.index.train(self.memory)
            self.index.nprobe = min(config.nprobe, nlist)
        self.index.add(self.memory)

    def __len__(self) -> int:
        return len(self.memory)

    def search(self, queries: torch.Tensor, exclude_source: torch.Tensor | None = None, per_view: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) -> distances (N,) and bank rows (N,) int64; `exclude_source` (N,) skips, per query,
        the rows that came from that image (-1: skip nothing). `per_view`: the queries are views of
        that many patches each, in order, and refinement picks its share in every view."""
        q = np.ascontiguousarray(queries.detach().cpu().float().numpy())
        if len(q) == 0:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        own = None if exclude_source is None or self.source is None else exclude_source.detach().cpu().numpy()
        best_d2, best = self._nearest(self.index, q, own)
        per = per_view if per_view and len(q) % per_view == 0 else len(q)
        k = int(np.ceil(self.config.refine * per)) if self.approximate else 0
        if k:
            views = best_d2.reshape(-1, per)
            top = (np.argpartition(-views, k - 1, axis=1)[:, :k] + per * np.arange(len(views))[:, None]).ravel()
            best_d2[top], best[top] = self._exact_few(q[top], None if own is None else own[top])
        return _distances(best_d2), torch.from_numpy(best.astype(np.int64))

    def _nearest(self, index, q: np.ndarray, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Squared distance and row of each query's nearest row in `index` (not from image `own`)."""
        if own is None:
            d2, idx = index.search(q, 1)
            return d2[:, 0].copy(), idx[:, 0].copy()
        k = min(EXCLUDE_CANDIDATES, len(self.memory))
        d2, idx = index.search(q, k)
        allowed = (idx >= 0) & (self.source[np.clip(idx, 0, None)] != own[:, None])
        first = allowed.argmax(1)
        rows = np.arange(len(q))
        best_d2, best = d2[rows, first], idx[rows, first]
        for r in np.flatnonzero(~allowed.any(1)):  # every candidate from its own image: rare, search exactly
            best_d2[r], best[r] = self._exact_excluding(q[r], own[r])
        return best_d2, best

    def _exact_few(self, q: np.ndarray, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest rows of a few queries as one matrix product (faster than faiss' flat index for
        a few dozen queries against a large bank)."""
        if self._rows_and_norms is None:
            memory = torch.from_numpy(self.memory)
            self._rows_and_norms = (memory, (memory * memory).sum(1))
        memory, norms = self._rows_and_norms
        qt = torch.from_numpy(q)
        d2 = torch.addmm(norms[None, :] + (qt * qt).sum(1, keepdim=True), qt, memory.T, alpha=-2)
        if own is not None:
            d2[torch.from_numpy(self.source)[None, :] == torch.from_numpy(own)[:, None]] = float("inf")
        best_d2, best = d2.min(1)
        if torch.isinf(best_d2).any():
            raise ValueError("every memory-bank row comes from the query's own image; fit on at least two images")
        return best_d2.numpy(), best.numpy()

    def _exact_excluding(self, query: np.ndarray, source: int) -> tuple[float, int]:
        keep = np.flatnonzero(self.source != source)
        if len(keep) == 0:
            raise ValueError("every memory-bank row comes from the query's own image; fit on at least two images")
        d2 = ((self.memory[keep] - query) ** 2).sum(1)
        j = int(d2.argmin())
        return float(d2[j]), int(keep[j])


def _distances(d2: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sqrt(np.clip(d2, 0, None)).astype(np.float32))

