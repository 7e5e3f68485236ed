import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import ndimage

from qarad.metrics import (
    PRO_FPR_LIMIT,
    aupro,
    auroc,
    average_precision,
    curve,
    f1_max,
    image_metrics,
    pixel_metrics,
    region_weights,
)

# ---------------------------------------------------------------------------------------------
# Slow, obviously correct references (written from the definitions, not from qarad.metrics).


def ref_auroc(scores, labels):
    """Probability that a positive outscores a negative, ties counted half (Mann-Whitney U)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    diff = scores[labels][:, None] - scores[~labels][None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def ref_pr(scores, labels):
    """(AP, F1-max) by predicting `score >= t` for every unique score t, strictest first.

    AP = sum_k (R_k - R_{k-1}) P_k with R_0 = 0 (scikit-learn's step-wise definition).
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    ap, f1, prev_recall = 0.0, 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        precision, recall = tp / pred.sum(), tp / labels.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
        if tp:
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return ap, f1


def ref_area(points, limit):
    """Trapezoid area under a polyline [(x, y), ...] with non-decreasing x, for x in [0, limit]."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # the segment crosses the limit: cut it there
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def ref_aupro(maps, masks, limit=PRO_FPR_LIMIT, structure=np.ones((3, 3))):
    """Sweep every unique score; PRO = mean over 8-connected regions of the fraction detected."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(m, dtype=bool) for m in masks]
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=structure)
        regions += [(i, lab == r) for r in range(1, n + 1)]
    n_normal = sum((~m).sum() for m in masks)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fp = sum(np.sum((s >= t) & ~m) for s, m in zip(maps, masks))
        pro = np.mean([np.mean(maps[i][r] >= t) for i, r in regions])
        points.append((fp / n_normal, pro))
    return ref_area(points, limit) / limit


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_image_metrics_hand_computed():
    # scores 0.1 0.4 0.35 0.8, labels 0 0 1 1 (scikit-learn's docstring example)
    # AUROC: pairs (pos, neg): .35>.1 yes, .35>.4 no, .8>.1 yes, .8>.4 yes -> 3/4
    # thresholds at positive scores: t=.8: P=1/1, R=1/2; t=.35: {.8,.4,.35}: P=2/3, R=1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6;  F1: t=.8: 2*1*.5/1.5 = 2/3; t=.35: 2*(2/3)*1/(5/3) = 0.8
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(5 / 6, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(0.8, abs=1e-12)
    assert image_metrics(scores, labels) == pytest.approx(
        {"image_auroc": 0.75, "image_ap": 5 / 6, "image_f1max": 0.8}, abs=1e-12)


def test_image_metrics_hand_computed_ties():
    # scores .5 .5 .5 .9, labels 0 1 0 1: pos .9 beats both negatives (2), pos .5 ties both (2 * 1/2)
    # AUROC = 3/4.  t=.9: P=1, R=1/2; t=.5: all four predicted: P=2/4, R=1.
    # AP = 1/2 * 1 + 1/2 * 1/2 = 3/4;  F1 = max(2*1*.5/1.5, 2*.5*1/1.5) = 2/3
    scores, labels = [0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]
    assert auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(2 / 3, abs=1e-12)


def test_reversed_scores_are_not_flipped():
    # Every negative outscores every positive: AUROC 0, not 1.
    # t=.2: {.9,.8,.2}: P=1/3, R=1/2; t=.1: all: P=1/2, R=1 -> AP = 1/6 + 1/4 = 5/12
    # F1: t=.2: 2*(1/3)*(1/2)/(5/6) = 0.4; t=.1: 2*(1/2)*1/(3/2) = 2/3
    scores, labels = [0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]
    assert auroc(scores, labels) == 0.0
    assert average_precision(scores, labels) == pytest.approx(5 / 12, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(2 / 3, abs=1e-12)


def test_all_tied_scores_give_half():
    assert auroc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0], []])
def test_one_class_only_is_refused(labels):
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc(np.arange(len(labels), dtype=float), labels)


# 3x5 map. Defect regions: A = {(0,0), (0,1)} (2 px), B = {(1,3), (2,2), (2,4)} (3 px, joined only
# diagonally: one region with 8-connectivity, three with 4-connectivity). 10 normal pixels.
PRO_MASK = np.array([[1, 1, 0, 0, 0],
                     [0, 0, 0, 1, 0],
                     [0, 0, 1, 0, 1]], dtype=bool)
PRO_MAP = np.array([[0.9, 0.5, 0.8, 0.6, 0.4],
                    [0.0, 0.0, 0.0, 0.9, 0.0],
                    [0.0, 0.0, 0.7, 0.0, 0.3]])
# Per-pixel PRO weights: A pixels 1/(2*2) = 1/4, B pixels 1/(3*2) = 1/6.
# threshold  new pixels         FPR   PRO
#   .9       A(0,0), B(1,3)     0     1/4 + 1/6       = 5/12
#   .8       normal             .1    5/12
#   .7       B(2,2)             .1    5/12 + 1/6      = 7/12
#   .6       normal             .2    7/12
#   .5       A(0,1)             .2    7/12 + 1/4      = 10/12
#   .4       normal             .3    10/12
#   .3       B(2,4)             .3    1                (vertical step exactly at the limit)
# Area to FPR .3 = .1 * (5 + 7 + 10) / 12 = 2.2 / 12; AUPRO = 2.2 / 12 / .3 = 11/18.
# Up to FPR .25 instead: .1 * 5/12 + .1 * 7/12 + .05 * 10/12 = 1.7 / 12; / .25 = 17/30.
# With 4-connectivity (4 regions: A 1/8 each, B 1/4 each): PRO 3/8, 5/8, 6/8 -> .1*14/8/.3 = 7/12.


def test_region_weights_use_8_connectivity():
    expected = np.zeros((3, 5))
    expected[0, :2] = 1 / 4
    expected[[1, 2, 2], [3, 2, 4]] = 1 / 6
    w = region_weights([PRO_MASK])  # one weight per defect pixel, in mask[mask] order
    np.testing.assert_allclose(w, expected[PRO_MASK.astype(bool)], rtol=0, atol=1e-15)
    # regions in different images count separately: four regions, so every weight halves
    w2 = region_weights([PRO_MASK, PRO_MASK])
    np.testing.assert_allclose(w2, np.r_[expected[PRO_MASK.astype(bool)], expected[PRO_MASK.astype(bool)]] / 2,
                               rtol=0, atol=1e-15)


def test_aupro_hand_computed():
    assert aupro([PRO_MAP], [PRO_MASK]) == pytest.approx(11 / 18, abs=1e-12)
    assert aupro([PRO_MAP], [PRO_MASK], fpr_limit=0.25) == pytest.approx(17 / 30, abs=1e-12)
    # the reference agrees, and would give 7/12 with 4-connectivity (so connectivity matters here)
    assert ref_aupro([PRO_MAP], [PRO_MASK]) == pytest.approx(11 / 18, abs=1e-12)
    assert ref_aupro([PRO_MAP], [PRO_MASK], structure=None) == pytest.approx(7 / 12, abs=1e-12)


def test_aupro_interpolates_through_a_tie_crossing_the_limit():
    # One defect pixel scored .5, tied with 5 of 10 normal pixels; the other 5 normals score 0.
    # PRO curve: (0, 0) -> (0.5, 1) in one diagonal step, so PRO(x) = 2x; area to .3 = .09; / .3 = .3
    # Its AUROC: 5 wins + 5 ties * 1/2 over 10 pairs = .75
    scores = np.array([[0.5] * 6 + [0.0] * 5])
    mask = np.zeros_like(scores, dtype=bool)
    mask[0, 0] = True
    assert aupro([scores], [mask]) == pytest.approx(0.3, abs=1e-12)
    assert auroc(scores, mask) == pytest.approx(0.75, abs=1e-12)


def test_pixel_metrics_on_maps_of_different_sizes():
    rng = np.random.default_rng(3)
    maps = [rng.integers(0, 6, (4, 7)) / 6, rng.integers(0, 6, (5, 3)) / 6]
    masks = [rng.random((4, 7)) < 0.3, rng.random((5, 3)) < 0.3]
    maps = [m + 0.4 * g for m, g in zip(maps, masks)]
    got = pixel_metrics(maps, masks)
    flat_s = np.concatenate([m.astype(np.float32).ravel() for m in maps])
    flat_l = np.concatenate([g.ravel() for g in masks])
    ap, f1 = ref_pr(flat_s, flat_l)
    assert set(got) == {"pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"}
    assert got["pixel_auroc"] == pytest.approx(ref_auroc(flat_s, flat_l), abs=1e-9)
    assert got["pixel_ap"] == pytest.approx(ap, abs=1e-9)
    assert got["pixel_f1max"] == pytest.approx(f1, abs=1e-9)
    assert got["aupro"] == pytest.approx(ref_aupro(maps, masks), abs=1e-9)


def test_pixel_metrics_refuses_map_mask_size_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        pixel_metrics([np.zeros((4, 5))], [np.ones((5, 4), dtype=bool)])


def test_curve_is_monotone_and_ends_at_one_one():
    rng = np.random.default_rng(0)
    c = curve(rng.integers(0, 5, 200), rng.random(200) < 0.3)
    assert (c.fpr[0], c.tpr[0]) == (0.0, 0.0) and (c.fpr[-1], c.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.tpr) >= 0)
    assert np.all(np.diff(c.recall) > 0) and np.all((c.precision > 0) & (c.precision <= 1))


# ---------------------------------------------------------------------------------------------
# Against the references on random data with many ties.


@pytest.mark.parametrize("seed", range(12))
def test_image_metrics_match_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    scores = rng.integers(0, int(rng.integers(2, 12)), n) + 1.5 * labels * rng.random()  # heavy ties
    ap, f1 = ref_pr(scores, labels)
    assert auroc(scores, labels) == pytest.approx(ref_auroc(scores, labels), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(ap, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(f1, abs=1e-12)


def random_blobs(rng, shape, n_seeds):
    seeds = np.zeros(shape, dtype=bool)
    seeds[rng.integers(0, shape[0], n_seeds), rng.integers(0, shape[1], n_seeds)] = True
    return ndimage.binary_dilation(seeds, iterations=int(rng.integers(0, 2)))


@pytest.mark.parametrize("seed", range(10))
def test_aupro_matches_reference_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    shapes = [tuple(rng.integers(3, 12, 2)) for _ in range(int(rng.integers(1, 4)))]
    masks = [random_blobs(rng, s, int(rng.integers(0, 4))) for s in shapes]
    masks[0][0, 0], masks[0][-1, -1] = True, False  # at least one defect and one normal pixel
    levels = int(rng.integers(3, 10))
    maps = [(rng.integers(0, levels, m.shape) + 2 * m * rng.random(m.shape).round(1)) / levels for m in masks]
    limit = float(rng.choice([0.05, 0.3, 1.0]))
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(ref_aupro(maps, masks, limit), abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Properties.

scored = st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=2, max_size=40).filter(
    lambda xs: any(lab for _, lab in xs) and not all(lab for _, lab in xs))

MONOTONE = {
    "affine": lambda s: 3.0 * s - 7.0,
    "cube": lambda s: (s - 10.0) ** 3,
    "exp": lambda s: np.exp(s / 4.0),
    "arctan": lambda s: np.arctan(s),
}


@given(scored, st.sampled_from(sorted(MONOTONE)))
def test_metrics_unchanged_under_strictly_increasing_transform(data, name):
    scores = np.array([s for s, _ in data], dtype=np.float64)
    labels = np.array([lab for _, lab in data])
    moved = MONOTONE[name](scores)
    assert auroc(moved, labels) == auroc(scores, labels)
    assert average_precision(moved, labels) == average_precision(scores, labels)
    assert f1_max(moved, labels) == f1_max(scores, labels)
    assert auroc(scores, labels) == pytest.approx(ref_auroc(scores, labels), abs=1e-12)


@given(scored)
def test_auroc_of_negated_scores_is_one_minus_auroc(data):
    scores = np.array([s for s, _ in data], dtype=np.float64)
    labels = np.array([lab for _, lab in data])
    assert auroc(-scores, labels) == pytest.approx(1.0 - auroc(scores, labels), abs=1e-12)


@given(st.integers(1, 30), st.integers(1, 30), st.floats(-1e3, 1e3), st.floats(1e-3, 1e3))
def test_perfect_separation_gives_one(n_pos, n_neg, offset, gap):
    neg = offset + np.linspace(0.0, 1.0, n_neg)
    pos = offset + 1.0 + gap + np.linspace(0.0, 1.0, n_pos)
    scores, labels = np.r_[neg, pos], np.r_[np.zeros(n_neg, bool), np.ones(n_pos, bool)]
    assume(pos.min() > neg.max())
    assert auroc(scores, labels) == 1.0
    assert average_precision(scores, labels) == pytest.approx(1.0, abs=1e-12)  # a sum of recall steps
    assert f1_max(scores, labels) == 1.0
    masks = [labels.reshape(1, -1)]
    assert aupro([scores.reshape(1, -1)], masks) == pytest.approx(1.0, abs=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2, 9), st.integers(2, 9), st.integers(1, 6))
def test_aupro_is_in_unit_interval(seed, h, w, levels):
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.3
    mask.flat[0], mask.flat[-1] = True, False
    score_map = rng.integers(0, levels, (h, w)) / levels
    value = aupro([score_map], [mask])
    assert 0.0 <= value <= 1.0 + 1e-12
    assert value == pytest.approx(ref_aupro([score_map], [mask]), abs=1e-10)
