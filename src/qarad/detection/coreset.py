"""Greedy k-center coreset selection (Sener & Savarese 2018; used by PatchCore, Roth et al. 2022).

Exact greedy selection costs O(N * k) distance evaluations, which is hours on CPU for the
~780k patches of a 762-image training set. `CoresetSampler` therefore runs exact greedy inside
partitions of at most `partition` patches, streamed as they arrive, and keeps the union. Each
partition keeps the same fraction, so the bank covers every part of the data; the benchmark
compares it with exact greedy on a set small enough for both.
"""
from __future__ import annotations

import torch


def greedy_coreset(features: torch.Tensor, k: int, projection: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Indices of `k` rows chosen by farthest-point greedy search (in projected space)."""
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    x = features @ projection if projection is not None else features
    sq = (x * x).sum(1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=generator).item()
    min_d = torch.full((n,), float("inf"))
    for i in range(1, k):
        c = x[chosen[i - 1]]
        d = sq - 2.0 * (x @ c) + c.dot(c)  # squared distance to the newest center
        min_d[chosen[i - 1]] = -1.0  # never pick a center twice (duplicates leave tiny residues)
        torch.minimum(min_d, d, out=min_d)
        chosen[i] = torch.argmax(min_d)
    return chosen


class CoresetSampler:
    """Feed patch features in any number of chunks; get the coreset (features, sources) at the end."""

    def __init__(self, ratio: float, projection_dim: int, partition: int, seed: int, limit: int | None = None):
        if not 0 < ratio <= 1:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        if limit is not None and limit < 1:
            raise ValueError(f"memory limit must be positive, got {limit}")
        self.ratio, self.projection_dim, self.partition, self.limit = ratio, projection_dim, partition, limit
        self.generator = torch.Generator().manual_seed(seed)
        self._projection: torch.Tensor | None = None
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffered = 0
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _project(self, dim: int) -> torch.Tensor | None:
        if self.projection_dim <= 0 or self.projection_dim >= dim:
            return None
        if self._projection is None:  # Johnson-Lindenstrauss: distances roughly preserved
            self._projection = torch.randn(dim, self.projection_dim, generator=self.generator) / self.projection_dim**0.5
        return self._projection

    def add(self, features: torch.Tensor, sources: torch.Tensor) -> None:
        self._buffer.append((features, sources))
        self._buffered += len(features)
        while self._buffered >= self.partition:
            self._select(self.partition)

    def _select(self, rows: int | None = None) -> None:
        """Reduce the first `rows` buffered rows (all when None); keep the rest buffered."""
        if not self._buffer:
            return
        feats = torch.cat([f for f, _ in self._buffer])
        srcs = torch.cat([s for _, s in self._buffer])
        rows = len(feats) if rows is None else rows
        rest = (feats[rows:], srcs[rows:])
        self._buffer = [rest] if len(rest[0]) else []
        self._buffered = len(rest[0])
        self._kept.append(self._reduce(feats[:rows], srcs[:rows], self.ratio))

    def _reduce(self, feats: torch.Tensor, srcs: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        k = max(1, round(len(feats) * ratio))
        idx = greedy_coreset(feats, k, self._project(feats.shape[1]), self.generator)
        return feats[idx].clone(), srcs[idx].clone()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._select()
        if not self._kept:
            raise ValueError("no patch features were given to the coreset sampler")
        feats = torch.cat([f for f, _ in self._kept])
        srcs = torch.cat([s for _, s in self._kept])
        if self.limit is not None and len(feats) > self.limit:
            # second greedy stage over the union, partition by partition, down to the limit
            ratio = self.limit / len(feats)
            parts = torch.randperm(len(feats), generator=self.generator).split(self.partition)
            reduced = [self._reduce(feats[p], srcs[p], ratio) for p in parts]
            feats = torch.cat([f for f, _ in reduced])[: self.limit]
            srcs = torch.cat([s for _, s in reduced])[: self.limit]
        return feats, srcs
