"""Image- and pixel-level anomaly detection metrics, exact or streaming in bounded memory.

AUROC, average precision (step-wise, as scikit-learn), F1-max, and AUPRO up to a false
positive rate of 0.3 normalised by 0.3 (Bergmann et al., "The MVTec AD dataset", IJCV 2021).
An AUC below 0.5 is reported as it is, never flipped.

Pixel metrics are accumulated one image at a time (`PixelMetrics`), in one of two modes:
exact keeps every graded pixel (its float32 score and label: curves from the positives' scores
plus one sorted array of the negatives', ties exact); streaming keeps a histogram of normal and
defect pixels per score bin, plus the defect pixels' region weights per bin, which is all that
ROC, PR and PRO curves need (PRO(t) is the weighted count of defect pixels above t, each
weighted 1 / size of its region). Bins are 2^e wide on a grid through 0, and only occupied
bins are stored. The first image sets e finer than float32 resolves (no range is needed in
advance); whenever more than `max_bins` bins are occupied, e grows by one and neighbouring bins
merge, so memory stays bounded whatever the pixel count or the score range (an outlier costs
one bin), and only scores less than 2^e apart are ever tied. Until the bins first widen the
streamed curves are the exact ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PRO_FPR_LIMIT = 0.3
EIGHT_CONNECTED = np.ones((3, 3), dtype=int)  # defect regions for PRO are 8-connected
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")  # the keys image_metrics returns
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")  # the keys pixel_metrics returns
METRICS = IMAGE_METRICS + PIXEL_METRICS  # every reported metric, in table order
LABELS = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1max": "image F1max",
          "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1max": "pixel F1max", "aupro": "AUPRO@0.3"}
PIXEL_MODES = ("auto", "exact", "streaming")  # auto: exact up to EXACT_PIXEL_LIMIT graded pixels
EXACT_PIXEL_LIMIT = 2**24  # ~16.8 Mpx (e.g. 256 maps of 256x256); exact mode peaks at ~20 bytes a pixel
MAX_BINS = 2**18  # score bins a streaming accumulator keeps (28 bytes each; twice that while merging)
_KEY_BITS = 61  # |score| / bin width < 2^61: keys, and bins' sums of them, fit int64
_START_BITS = 52  # a first image's bins are 2^-52 of its largest |score|: finer than float32 resolves


@dataclass(frozen=True)
class Curve:
    """Exact operating points, strictest threshold first.

    (fpr, tpr) trace the ROC curve (or the PRO curve when positives carry region weights);
    (precision, recall) are taken at each distinct positive score, where PR changes.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def _operating_points(tp_count, tp_weight, fp_above, fp_atleast, n_pos: float, n_neg: float, w_total: float) -> Curve:
    """Per positive threshold t (strictest first): positives >= t (count and weight), negatives > t
    and >= t. Between two thresholds the curve moves right over negatives only, then jumps through
    the tie group at the next threshold: two points per threshold are exact."""
    if n_pos == 0 or n_neg == 0:
        raise ValueError("metrics need at least one positive and one negative sample")
    tp_before = np.r_[0.0, tp_weight[:-1]]
    fpr = np.r_[0.0, np.column_stack([fp_above, fp_atleast]).ravel(), n_neg] / n_neg
    tpr = np.r_[0.0, np.column_stack([tp_before, tp_weight]).ravel(), w_total] / w_total
    precision = tp_count / (tp_count + fp_atleast)
    return Curve(fpr, tpr, precision, tp_count / n_pos)


def curve(scores, labels, pos_weight=None) -> Curve:
    return curves_of(scores, labels, [pos_weight])[0]


def curves_of(scores, labels, pos_weights: list) -> list[Curve]:
    """`curve(scores, labels, w)` for every w of `pos_weights` (None: unweighted), sorting the
    scores once for all of them (the sort is what pixel curves cost)."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    pos = scores[labels]
    neg = np.sort(scores[~labels])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("metrics need at least one positive and one negative sample")
    order = np.argsort(-pos, kind="stable")
    pos = pos[order]
    last = np.r_[pos[1:] != pos[:-1], True]  # last index of each run of equal scores
    thresholds = pos[last]
    tp_count = (np.flatnonzero(last) + 1).astype(np.float64)  # positives >= t
    fp_above = (neg.size - np.searchsorted(neg, thresholds, side="right")).astype(np.float64)  # > t
    fp_atleast = (neg.size - np.searchsorted(neg, thresholds, side="left")).astype(np.float64)  # >= t
    out = []
    for pos_weight in pos_weights:
        w = np.ones(pos.size) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64).ravel()[order]
        out.append(_operating_points(tp_count, np.cumsum(w)[last], fp_above, fp_atleast, pos.size, neg.size,
                                     w.sum()))
    return out


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], interpolating the point at `limit`."""
    cut = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:cut], y[:cut]
    if cut < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[cut - 1], x[cut], y[cut - 1], y[cut]
        xs = np.r_[xs, limit]
        ys = np.r_[ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return _trapezoid(xs, ys)


def _auc(c: Curve) -> float:
    return _trapezoid(c.fpr, c.tpr)


def _ap(c: Curve) -> float:
    return float(np.sum(np.diff(np.r_[0.0, c.recall]) * c.precision))


def _f1max(c: Curve) -> float:
    return float(np.max(2 * c.precision * c.recall / (c.precision + c.recall)))


def auroc(scores, labels) -> float:
    return _auc(curve(scores, labels))


def average_precision(scores, labels) -> float:
    return _ap(curve(scores, labels))


def f1_max(scores, labels) -> float:
    return _f1max(curve(scores, labels))


def _inverse_region_sizes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(1 / size of its 8-connected region, for every defect pixel in `mask[mask]` order; number of regions)."""
    lab, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    inside = lab[mask]
    inv = np.zeros(n + 1)
    if n:
        inv[1:] = 1.0 / np.bincount(inside, minlength=n + 1)[1:]
    return inv[inside], n


def region_weights(masks: list[np.ndarray]) -> np.ndarray:
    """Weight of every defect pixel (in `mask[mask]` order, image after image):
    1 / (size of its 8-connected region * number of regions overall).

    Summed over the defect pixels above a threshold this is the mean per-region overlap (PRO).
    Only defect pixels get a weight, so memory follows the defect area, not the image area.
    """
    parts = [_inverse_region_sizes(np.asarray(m, dtype=bool)) for m in masks]
    total = sum(n for _, n in parts)
    return np.concatenate([inv / total for inv, _ in parts]) if parts else np.zeros(0)


def _finest_exponent(top: float) -> int:
    """The smallest e for which the keys floor(score / 2^e) of scores up to |top| stay below 2^_KEY_BITS."""
    return math.frexp(top if top > 0 else 1.0)[1] - _KEY_BITS


@dataclass(frozen=True)
class Histogram:
    """Graded pixels per score bin; bin k holds the scores in [k 2^exponent, (k + 1) 2^exponent).
    Only occupied bins are stored, in increasing score order."""

    keys: np.ndarray  # (bins,) int64 bin numbers, strictly increasing
    neg: np.ndarray  # (bins,) int64 normal pixels
    pos: np.ndarray  # (bins,) int64 defect pixels
    pos_weight: np.ndarray  # (bins,) float64: sum of 1 / region size over the bin's defect pixels
    exponent: int  # bins are 2^exponent wide

    @staticmethod
    def of(scores: np.ndarray, labels: np.ndarray, weight: np.ndarray, exponent: int) -> "Histogram":
        """Bin one image's pixels (`weight`: 1 / region size for defect pixels, 0 for normal ones)."""
        keys = np.floor(scores.astype(np.float64) * 2.0 ** -exponent).astype(np.int64)  # exact: a power of 2
        return Histogram.collapse(keys, (~labels).astype(np.int64), labels.astype(np.int64), weight, exponent)

    @staticmethod
    def collapse(keys, neg, pos, pos_weight, exponent: int) -> "Histogram":
        """Sum the entries of equal keys (in any order, repeats allowed): by counting over the keys'
        span when it is short (no sort), else by sorting."""
        if keys.size == 0:
            return Histogram(keys, neg, pos, pos_weight, exponent)
        lo, hi = int(keys.min()), int(keys.max())
        if hi - lo < 2 * keys.size + 1024:
            k = keys - lo
            n_neg = np.bincount(k, weights=neg).astype(np.int64)  # float64 counts are exact below 2^53
            n_pos = np.bincount(k, weights=pos).astype(np.int64)
            at = np.flatnonzero(n_neg + n_pos)
            return Histogram(at + lo, n_neg[at], n_pos[at], np.bincount(k, weights=pos_weight)[at], exponent)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return Histogram(keys[start], *(np.add.reduceat(a[order], start) for a in (neg, pos, pos_weight)), exponent)

    @staticmethod
    def merge(parts: list["Histogram"], exponent: int) -> "Histogram":
        parts = [p.coarsened(exponent) for p in parts]
        return Histogram.collapse(*(np.concatenate([getattr(p, f) for p in parts])
                                    for f in ("keys", "neg", "pos", "pos_weight")), exponent)

    def coarsened(self, exponent: int) -> "Histogram":
        """The same pixels in bins 2^(exponent - self.exponent) times as wide (floor division of the keys)."""
        if exponent < self.exponent:
            raise ValueError(f"cannot refine bins of 2^{self.exponent} into 2^{exponent}")
        if exponent == self.exponent:
            return self
        return Histogram.collapse(self.keys >> (exponent - self.exponent), self.neg, self.pos, self.pos_weight,
                                  exponent)


class ImagePixels:
    """One image's graded pixels (anomaly map and ground-truth mask of the same size), in the form
    the accumulators take; add one to several accumulators (overall and per defect type) without
    repeating its work."""

    def __init__(self, anomaly_map: np.ndarray, mask: np.ndarray):
        if np.shape(anomaly_map) != np.shape(mask):
            raise ValueError(f"anomaly map {np.shape(anomaly_map)} and mask {np.shape(mask)} differ in size")
        mask = np.asarray(mask, dtype=bool)
        self.scores = np.asarray(anomaly_map, dtype=np.float32).ravel()
        if not np.isfinite(self.scores).all():
            raise ValueError("anomaly map has scores that are not finite (NaN or infinity)")
        self.labels = mask.ravel()
        self.inv_size, self.n_regions = _inverse_region_sizes(mask)  # per defect pixel, scores[labels] order
        self.top = float(np.abs(self.scores).max()) if self.scores.size else 0.0
        self._binned: Histogram | None = None

    def histogram(self, exponent: int) -> Histogram:
        if self._binned is None or exponent < self._binned.exponent:  # else coarsen the finest made so far
            weight = np.zeros(self.scores.size)
            weight[self.labels] = self.inv_size
            self._binned = Histogram.of(self.scores, self.labels, weight, exponent)
        return self._binned.coarsened(exponent)


class PixelMetrics:
    """Pixel AUROC / AP / F1-max over all graded pixels and AUPRO, accumulated one image at a time:
    exact (every pixel kept) or streaming (a histogram of at most `max_bins` bins; module docstring)."""

    def __init__(self, streaming: bool = False, max_bins: int = MAX_BINS):
        self.streaming, self.max_bins = streaming, max_bins
        self.n_images = self.n_pixels = self.n_regions = 0
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # exact: (scores, labels, inv_size)
        self._hist: Histogram | None = None  # streaming: merged bins ...
        self._pending: list[Histogram] = []  # ... and images' bins not merged yet
        self._pending_bins = 0
        self._start: int | None = None  # the first image's bin exponent
        self._exponent = 0
        self._curves: tuple[Curve, Curve] | None = None

    def add(self, pixels: ImagePixels) -> None:
        self.n_images += 1
        self.n_pixels += pixels.scores.size
        self.n_regions += pixels.n_regions
        self._curves = None
        if not self.streaming:
            self._kept.append((pixels.scores, pixels.labels, pixels.inv_size))
            return
        if self._start is None:  # finer than float32 resolves: ties only where the scores are equal
            self._start = self._exponent = _finest_exponent(pixels.top) + _KEY_BITS - _START_BITS
        if _finest_exponent(pixels.top) > self._exponent:  # scores far beyond the first image's: wider bins
            self._merge(_finest_exponent(pixels.top))
        part = pixels.histogram(self._exponent)
        self._pending.append(part)
        self._pending_bins += part.keys.size
        if self._pending_bins > self.max_bins:
            self._merge()

    def _merge(self, exponent: int | None = None) -> None:
        parts = ([self._hist] if self._hist is not None else []) + self._pending
        if not parts:
            empty = np.zeros(0, np.int64)
            parts = [Histogram(empty, empty, empty, np.zeros(0), self._exponent)]
        self._exponent = max(self._exponent, exponent or self._exponent)
        merged = Histogram.merge(parts, self._exponent)
        while merged.keys.size > self.max_bins:  # bins twice as wide: neighbours merge
            self._exponent += 1
            merged = merged.coarsened(self._exponent)
        self._hist, self._pending, self._pending_bins = merged, [], 0

    @property
    def coarsened(self) -> bool:
        """Whether the bins ever widened beyond the first image's (exact curves until they do)."""
        return self._start is not None and self._exponent > self._start

    def histogram(self) -> Histogram:
        """The streamed bins (streaming mode only)."""
        if not self.streaming:
            raise ValueError("an exact accumulator keeps pixels, not bins")
        if self._pending or self._hist is None:
            self._merge()
        return self._hist

    def roc_and_pro(self) -> tuple[Curve, Curve]:
        """(ROC + PR curve, PRO curve) over everything added so far."""
        if self._curves is None:
            if self.streaming:
                h = self.histogram()
                self._curves = (_binned_curve(h, h.pos.astype(np.float64)), _binned_curve(h, h.pos_weight))
            else:
                scores = np.concatenate([s for s, _, _ in self._kept]) if self._kept else np.zeros(0, np.float32)
                labels = np.concatenate([g for _, g, _ in self._kept]) if self._kept else np.zeros(0, bool)
                weights = np.concatenate([w for _, _, w in self._kept]) if self._kept else np.zeros(0)
                roc, pro = curves_of(scores, labels, [None, weights])
                self._curves = (roc, pro)
        return self._curves

    def aupro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        pro = self.roc_and_pro()[1]
        return _area_up_to(pro.fpr, pro.tpr, fpr_limit) / fpr_limit

    def metrics(self) -> dict[str, float]:
        roc, _ = self.roc_and_pro()
        return {"pixel_auroc": _auc(roc), "pixel_ap": _ap(roc), "pixel_f1max": _f1max(roc), "aupro": self.aupro()}

    def sampled_curves(self, points: int = 101) -> dict:
        roc, pro = self.roc_and_pro()
        return {"pixel_roc": sampled(roc, points), "pro": sampled(pro, points, PRO_FPR_LIMIT)}

    def describe(self) -> dict:
        """What metrics.json records about how the pixel metrics were computed."""
        out = {"mode": "streaming" if self.streaming else "exact", "pixels": int(self.n_pixels)}
        if self.streaming:
            h = self.histogram()
            tied = float(np.sum(h.pos * h.neg.astype(np.float64)))
            pairs = float(h.pos.sum()) * float(h.neg.sum())
            out.update(bins=int(h.keys.size), bin_width=2.0 ** h.exponent, coarsened=self.coarsened,
                       # every (defect, normal) pair sharing a bin counts 1/2 where exact counts 0 or 1
                       pixel_auroc_error_bound=0.5 * tied / pairs if self.coarsened and pairs else 0.0)
        return out


def _binned_curve(h: Histogram, weight: np.ndarray) -> Curve:
    """The curve whose thresholds are the bins that hold defect pixels (as `curve`'s are the distinct
    positive scores: the same curve when no bit was dropped)."""
    pos, neg, w = h.pos[::-1], h.neg[::-1], weight[::-1]  # strictest bin first
    at = pos > 0
    fp_atleast = np.cumsum(neg)[at].astype(np.float64)
    return _operating_points(np.cumsum(pos)[at].astype(np.float64), np.cumsum(w)[at], fp_atleast - neg[at],
                             fp_atleast, float(pos.sum()), float(neg.sum()), float(w.sum()))


def streams(n_pixels: int, mode: str = "auto") -> bool:
    """Whether pixel metrics over `n_pixels` graded pixels stream, for a mode of PIXEL_MODES."""
    if mode not in PIXEL_MODES:
        raise ValueError(f"pixel metrics mode must be one of {PIXEL_MODES}, got {mode!r}")
    return mode == "streaming" or (mode == "auto" and n_pixels > EXACT_PIXEL_LIMIT)


def _accumulated(maps, masks, mode: str) -> PixelMetrics:
    n_pixels = sum(int(np.size(m)) for m in maps)
    acc = PixelMetrics(streaming=streams(n_pixels, mode))
    for m, g in zip(maps, masks):
        acc.add(ImagePixels(m, g))
    return acc


def aupro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` (so in [0, 1])."""
    return _accumulated(maps, masks, "exact").aupro(fpr_limit)


def image_metrics(scores, labels) -> dict[str, float]:
    c = curve(scores, labels)
    return {"image_auroc": _auc(c), "image_ap": _ap(c), "image_f1max": _f1max(c)}


def pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray], mode: str = "exact") -> dict[str, float]:
    """Pixel AUROC / AP / F1-max over all pixels of all images, and AUPRO@0.3, from lists of maps
    and masks (`PixelMetrics` takes them one at a time instead).

    Maps may differ in size between images (keep-aspect, tiling); each must match its mask.
    """
    return _accumulated(maps, masks, mode).metrics()


def sampled(c: Curve, points: int = 101, fpr_limit: float = 1.0) -> list[list[float]]:
    """(fpr, tpr) on a regular fpr grid up to `fpr_limit`, for plotting; the step at each fpr is kept
    by taking the highest tpr reached there (curves are monotone)."""
    grid = np.linspace(0.0, fpr_limit, points)
    idx = np.searchsorted(c.fpr, grid, side="right") - 1
    return [[float(x), float(c.tpr[i])] for x, i in zip(grid, idx)]


def curves(scores, labels, pixels: PixelMetrics, points: int = 101) -> dict:
    """Plot-ready image ROC, pixel ROC and PRO (up to PRO_FPR_LIMIT) curves; the same definitions
    as the metrics above, so the areas under them are the reported numbers."""
    return {"image_roc": sampled(curve(scores, labels), points), **pixels.sampled_curves(points)}
