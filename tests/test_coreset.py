import pytest
import torch

import qarad.detection.coreset as coreset
from qarad.detection.coreset import CoresetSampler, greedy_coreset


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- greedy_coreset -----------------------------------------------------------------------------

# 1-D points 0, 1, 4, 10, 12 (no distance ties). Whatever the random first pick, the rest follows:
#   start 0 (x=0):  farthest is 12 (idx 4); then min distances to {0, 12}: 1->1, 4->4, 10->2 -> idx 2
#   start 1 (x=1):  farthest 12 (idx 4); then to {1, 12}: 0->1, 4->3, 10->2             -> idx 2
#   start 2 (x=4):  farthest 12 (8 > 4, idx 4); then to {4, 12}: 0->4, 1->3, 10->2     -> idx 0
#   start 3 (x=10): farthest 0 (idx 0); then to {10, 0}: 1->1, 4->4, 12->2             -> idx 2
#   start 4 (x=12): farthest 0 (idx 0); then to {12, 0}: 1->1, 4->4, 10->2             -> idx 2
LINE = torch.tensor([[0.0], [1.0], [4.0], [10.0], [12.0]])
EXPECTED = {0: [0, 4, 2], 1: [1, 4, 2], 2: [2, 4, 0], 3: [3, 0, 2], 4: [4, 0, 2]}


def test_farthest_point_hand_example():
    starts = set()
    for seed in range(20):
        idx = greedy_coreset(LINE, 3, None, gen(seed)).tolist()
        assert idx == EXPECTED[idx[0]]
        starts.add(idx[0])
    assert len(starts) >= 3  # several different first picks were checked


def brute_force_check(x, idx):
    """Each pick after the first is a point farthest from the points picked before it."""
    d = torch.cdist(x.double(), x.double())
    for i in range(1, len(idx)):
        min_d = d[:, idx[:i]].min(dim=1).values
        assert min_d[idx[i]] == pytest.approx(min_d.max().item(), rel=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_k_distinct_farthest_points_on_random_data(seed):
    x = torch.randn(200, 16, generator=gen(seed))
    idx = greedy_coreset(x, 25, None, gen(seed))
    assert idx.dtype == torch.long and idx.shape == (25,)
    assert len(set(idx.tolist())) == 25 and 0 <= idx.min() and idx.max() < 200
    brute_force_check(x, idx.tolist())


def test_projection_decides_the_distance():
    # raw distances are dominated by the second coordinate (rows 1 and 3 are 200 apart);
    # the projection keeps only the first: 0, 1, 5, 2 -> from start 0, 1 or 3 the farthest is row 2 (x=5),
    # from start 2 it is row 0. In raw space row 1 or 3 would come second.
    x = torch.tensor([[0.0, 0.0], [1.0, 100.0], [5.0, 0.0], [2.0, -100.0]])
    keep_first = torch.tensor([[1.0], [0.0]])
    farthest = {0: 2, 1: 2, 2: 0, 3: 2}
    starts = set()
    for seed in range(12):
        first, second = greedy_coreset(x, 2, keep_first, gen(seed)).tolist()
        assert second == farthest[first]
        starts.add(first)
    assert len(starts) >= 2


def test_same_seed_same_coreset():
    x = torch.randn(300, 8, generator=gen(1))
    a = greedy_coreset(x, 30, None, gen(5))
    assert torch.equal(a, greedy_coreset(x, 30, None, gen(5)))
    firsts = {greedy_coreset(x, 2, None, gen(s))[0].item() for s in range(6)}
    assert len(firsts) > 1  # the seed does drive the first pick


def test_k_at_least_n_keeps_everything():
    x = torch.randn(7, 3)
    assert torch.equal(greedy_coreset(x, 7, None, gen()), torch.arange(7))
    assert torch.equal(greedy_coreset(x, 50, None, gen()), torch.arange(7))


def test_duplicate_rows_still_give_distinct_indices():
    x = (torch.randn(5, 8, generator=gen(0)) * 10).repeat_interleave(4, 0)  # 5 points, each 4 times
    idx = greedy_coreset(x, 8, None, gen(0)).tolist()
    assert len(set(idx)) == 8


# ---- CoresetSampler -----------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = coreset.greedy_coreset

    def recording(features, k, projection, generator):
        calls.append((len(features), k, projection))
        return real(features, k, projection, generator)

    monkeypatch.setattr(coreset, "greedy_coreset", recording)
    return calls


def feed(sampler, feats, chunk):
    for start in range(0, len(feats), chunk):
        sampler.add(feats[start:start + chunk], torch.arange(start, min(start + chunk, len(feats)), dtype=torch.int32))


def test_sampler_reduces_each_partition_separately(spy):
    feats = torch.randn(70, 6, generator=gen(0))
    sampler = CoresetSampler(ratio=0.2, projection_dim=0, partition=25, seed=0)
    feed(sampler, feats, 10)
    # exactly 25 rows are reduced each time the buffer holds 25 (-> 5), the last 20 in result()
    assert [(n, k) for n, k, _ in spy] == [(25, 5), (25, 5)]
    kept, sources = sampler.result()
    assert [(n, k) for n, k, _ in spy] == [(25, 5), (25, 5), (20, 4)]
    assert kept.shape == (14, 6) and sources.dtype == torch.int32
    assert torch.equal(kept, feats[sources.long()])  # features travel with their sources
    assert len(set(sources.tolist())) == 14
    blocks = [sources[:5], sources[5:10], sources[10:]]
    for block, (lo, hi) in zip(blocks, [(0, 25), (25, 50), (50, 70)]):
        assert ((block >= lo) & (block < hi)).all()  # every partition is represented


def test_sampler_memory_limit(spy):
    feats = torch.randn(120, 6, generator=gen(1))
    sampler = CoresetSampler(ratio=0.5, projection_dim=0, partition=20, seed=3, limit=17)
    feed(sampler, feats, 20)
    kept, sources = sampler.result()
    assert len(kept) == 17  # 60 after the first stage, then 20-row parts at ratio 17/60: 3 parts of 6 -> 18 -> 17
    assert [(n, k) for n, k, _ in spy][-3:] == [(20, 6), (20, 6), (20, 6)]
    assert torch.equal(kept, feats[sources.long()])
    assert len(set(sources.tolist())) == 17


def test_sampler_under_the_limit_is_not_reduced_again(spy):
    feats = torch.randn(40, 4, generator=gen(2))
    sampler = CoresetSampler(ratio=0.25, projection_dim=0, partition=100, seed=0, limit=10)
    feed(sampler, feats, 8)
    kept, _ = sampler.result()
    assert len(kept) == 10 and [(n, k) for n, k, _ in spy] == [(40, 10)]


def test_sampler_projection_is_drawn_once_and_shared(spy):
    feats = torch.randn(60, 32, generator=gen(3))
    sampler = CoresetSampler(ratio=0.1, projection_dim=8, partition=20, seed=0)
    feed(sampler, feats, 20)
    sampler.result()
    projections = [p for _, _, p in spy]
    assert len(projections) == 3 and projections[0].shape == (32, 8)
    assert all(p is projections[0] for p in projections)
    for dim in (0, 32, 64):  # off, or not a reduction: raw features
        spy.clear()
        s = CoresetSampler(ratio=0.1, projection_dim=dim, partition=100, seed=0)
        s.add(feats, torch.zeros(60, dtype=torch.int32))
        s.result()
        assert spy[0][2] is None


def test_sampler_is_deterministic_given_the_seed():
    feats = torch.randn(90, 16, generator=gen(4))

    def run(seed):
        s = CoresetSampler(ratio=0.1, projection_dim=4, partition=30, seed=seed, limit=7)
        feed(s, feats, 15)
        return s.result()

    a, b = run(11), run(11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sampler_validation():
    with pytest.raises(ValueError, match="ratio"):
        CoresetSampler(ratio=0.0, projection_dim=0, partition=10, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        CoresetSampler(ratio=1.5, projection_dim=0, partition=10, seed=0)
    with pytest.raises(ValueError, match="memory limit"):
        CoresetSampler(ratio=0.5, projection_dim=0, partition=10, seed=0, limit=0)
    with pytest.raises(ValueError, match="no patch features"):
        CoresetSampler(ratio=0.5, projection_dim=0, partition=10, seed=0).result()


def test_partitions_are_at_most_partition_rows(spy):
    sampler = CoresetSampler(ratio=0.1, projection_dim=0, partition=25, seed=0)
    sampler.add(torch.randn(100, 4, generator=gen(0)), torch.zeros(100, dtype=torch.int32))
    sampler.result()
    assert max(n for n, _, _ in spy) <= 25
