"""Streaming pixel metrics (metrics.PixelMetrics with streaming=True) against the exact ones."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from qarad import metrics as M
from qarad.metrics import PIXEL_METRICS, ImagePixels, PixelMetrics, pixel_metrics

TOLERANCE = 0.001  # the target: streaming within 0.001 of exact on every metric


def hard_maps(seed: int, size=(40, 56)):
    """Maps a detector could give, and the cases that break binning: smooth scores over two octaves,
    quantised scores (heavy ties), a constant map, a normal image, 1-pixel regions, negative scores."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(8):
        mask = np.zeros(size, bool)
        if i % 2:  # defect images: blocks of random size, and single pixels
            for _ in range(int(rng.integers(1, 4))):
                y, x, s = int(rng.integers(0, size[0] - 8)), int(rng.integers(0, size[1] - 8)), int(rng.integers(1, 8))
                mask[y:y + s, x:x + s] = True
            mask[rng.integers(0, size[0], 3), rng.integers(0, size[1], 3)] = True
        smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, size), 2) * 4 + 2.0
        maps.append((smooth + mask * rng.uniform(0.2, 1.5)).astype(np.float32))
        masks.append(mask)
    maps[2] = np.round(maps[2] * 4) / 4  # ties within and across classes
    maps[3] = np.round(maps[3] * 2) / 2
    maps[4] = np.full(size, 2.5, np.float32)  # a constant normal map, tied with many others
    maps[5] = maps[5] - 3.0  # negative scores (fused z-scores are signed)
    return maps, masks


def accumulate(maps, masks, streaming: bool, max_bins: int = M.MAX_BINS) -> PixelMetrics:
    acc = PixelMetrics(streaming, max_bins)
    for m, g in zip(maps, masks):
        acc.add(ImagePixels(m, g))
    return acc


@pytest.mark.parametrize("seed", range(4))
def test_streaming_without_dropped_bits_is_the_exact_result(seed):
    maps, masks = hard_maps(seed)
    streamed = accumulate(maps, masks, streaming=True)
    assert not streamed.describe()["coarsened"]  # fewer distinct scores than MAX_BINS
    exact = pixel_metrics(maps, masks)
    assert streamed.metrics() == pytest.approx(exact, abs=1e-12)
    assert pixel_metrics(maps, masks, mode="streaming") == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_bins", [2**12, 2**13])
def test_streaming_with_coarse_bins_stays_within_a_thousandth(seed, max_bins):
    maps, masks = hard_maps(seed)
    exact = accumulate(maps, masks, streaming=False)
    streamed = accumulate(maps, masks, streaming=True, max_bins=max_bins)
    info = streamed.describe()
    assert info["coarsened"] and info["bins"] <= max_bins  # bounded, and really re-binned
    got, want = streamed.metrics(), exact.metrics()
    for k in PIXEL_METRICS:
        assert abs(got[k] - want[k]) <= TOLERANCE, (k, got[k], want[k])
    assert abs(got["pixel_auroc"] - want["pixel_auroc"]) <= info["pixel_auroc_error_bound"] + 1e-12
    assert exact.describe() == {"mode": "exact", "pixels": exact.n_pixels}


def test_streaming_matches_scikit_learn_after_rebinning():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    maps, masks = hard_maps(11)
    got = accumulate(maps, masks, streaming=True, max_bins=2**12).metrics()
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([g.ravel() for g in masks])
    assert got["pixel_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=TOLERANCE)
    assert got["pixel_ap"] == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), abs=TOLERANCE)


def test_bins_stay_bounded_while_images_keep_coming():
    rng = np.random.default_rng(0)
    acc = PixelMetrics(streaming=True, max_bins=4096)
    for i in range(30):
        mask = np.zeros((32, 32), bool)
        mask[i % 20:i % 20 + 4, 5:9] = True
        acc.add(ImagePixels(rng.exponential(1.0, (32, 32)) + 3 * mask, mask))  # every score distinct
        assert acc._hist is None or acc._hist.keys.size <= 4096
        assert acc._pending_bins <= 4096
    assert acc.n_images == 30 and acc.n_pixels == 30 * 32 * 32 and acc.n_regions == 30
    assert acc.describe()["bins"] <= 4096


def test_no_defect_pixel_or_no_image_is_refused_in_both_modes():
    normal = [np.random.default_rng(1).random((5, 6))]
    for streaming in (False, True):
        with pytest.raises(ValueError, match="positive and one negative"):
            accumulate(normal, [np.zeros((5, 6), bool)], streaming).metrics()
        with pytest.raises(ValueError, match="positive and one negative"):
            PixelMetrics(streaming).metrics()


def test_one_image_may_feed_several_accumulators():
    maps, masks = hard_maps(3)
    pixels = [ImagePixels(m, g) for m, g in zip(maps, masks)]
    coarse, fine = PixelMetrics(True, 2**10), PixelMetrics(True)
    for p in pixels:
        coarse.add(p)
        fine.add(p)
    assert coarse.describe()["coarsened"] and not fine.describe()["coarsened"]
    assert fine.metrics() == pytest.approx(pixel_metrics(maps, masks), abs=1e-12)


def test_sampled_curves_of_both_modes_agree():
    maps, masks = hard_maps(5)
    exact = accumulate(maps, masks, False).sampled_curves()
    streamed = accumulate(maps, masks, True, 2**12).sampled_curves()
    for key in ("pixel_roc", "pro"):
        assert len(exact[key]) == len(streamed[key]) == 101
        assert np.abs(np.array(exact[key]) - np.array(streamed[key])).max() < 0.01


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=60), st.integers(-30, 10), st.integers(0, 12))
def test_widening_bins_is_binning_at_the_wider_width(values, exponent, more):
    scores = np.array(values, dtype=np.float32)
    labels = np.arange(scores.size) % 3 == 0
    weight = labels / 4.0
    fine = M.Histogram.of(scores, labels, weight, exponent)
    wide = M.Histogram.of(scores, labels, weight, exponent + more)
    got = fine.coarsened(exponent + more)
    for f in ("keys", "neg", "pos", "pos_weight"):
        np.testing.assert_array_equal(getattr(got, f), getattr(wide, f))
    assert np.all(np.diff(fine.keys) > 0) and fine.neg.sum() + fine.pos.sum() == scores.size
    # bin k holds [k 2^e, (k + 1) 2^e): equal scores share a bin, and order is kept
    order = np.argsort(scores, kind="stable")
    keys = np.floor(scores[order].astype(np.float64) / 2.0 ** exponent)
    assert np.all(np.diff(keys) >= 0) and set(keys.astype(np.int64)) == set(fine.keys)


def test_far_larger_scores_widen_the_bins_instead_of_overflowing():
    small, large = np.linspace(0, 1e-3, 50).reshape(5, 10), np.full((5, 10), 3e20)
    mask = np.zeros((5, 10), bool)
    mask[2, 3] = True
    acc = accumulate([small, large + small], [mask, mask], streaming=True)
    assert acc.describe()["coarsened"]
    with pytest.raises(ValueError, match="not finite"):
        ImagePixels(np.full((2, 2), np.inf), np.zeros((2, 2), bool))


def test_mode_choice():
    assert not M.streams(M.EXACT_PIXEL_LIMIT) and M.streams(M.EXACT_PIXEL_LIMIT + 1)
    assert M.streams(10, "streaming") and not M.streams(10**12, "exact")
    with pytest.raises(ValueError, match="auto"):
        M.streams(10, "approximate")
