"""Image- and pixel-level anomaly detection metrics, exact and memory-lean.

AUROC, average precision (step-wise, as scikit-learn), F1-max, and AUPRO up to a false
positive rate of 0.3 normalised by 0.3 (Bergmann et al., "The MVTec AD dataset", IJCV 2021).
Curves are built from the positives' scores plus one sorted array of the negatives' scores,
so ties are exact and memory stays at about one float per pixel. An AUC below 0.5 is reported
as it is, never flipped.
"""
from __future__ import annotations

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


def curve(scores, labels, pos_weight=None) -> Curve:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    pos = scores[labels]
    neg = np.sort(scores[~labels])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("metrics need at least one positive and one negative sample")
    w = np.ones(pos.size) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64).ravel()
    order = np.argsort(-pos, kind="stable")
    pos, w = pos[order], w[order]
    last = np.r_[pos[1:] != pos[:-1], True]  # last index of each run of equal scores
    thresholds = pos[last]
    tp_count = (np.flatnonzero(last) + 1).astype(np.float64)  # positives >= t
    tp_weight = np.cumsum(w)[last]
    fp_above = (neg.size - np.searchsorted(neg, thresholds, side="right")).astype(np.float64)  # > t
    fp_atleast = (neg.size - np.searchsorted(neg, thresholds, side="left")).astype(np.float64)  # >= t
    # Between two positive thresholds the curve moves right over negatives only, then jumps
    # through the tie group at the next positive score: two points per threshold are exact.
    tp_before = np.r_[0.0, tp_weight[:-1]]
    fpr = np.r_[0.0, np.column_stack([fp_above, fp_atleast]).ravel(), neg.size] / neg.size
    tpr = np.r_[0.0, np.column_stack([tp_before, tp_weight]).ravel(), w.sum()] / w.sum()
    precision = tp_count / (tp_count + fp_atleast)
    return Curve(fpr, tpr, precision, tp_count / pos.size)


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


def region_weights(masks: list[np.ndarray]) -> np.ndarray:
    """Weight of every defect pixel (in `mask[mask]` order, image after image):
    1 / (size of its 8-connected region * number of regions overall).

    Summed over the defect pixels above a threshold this is the mean per-region overlap (PRO).
    Only defect pixels get a weight, so memory follows the defect area, not the image area.
    """
    labelled = [ndimage.label(m, structure=EIGHT_CONNECTED) for m in masks]
    total = sum(n for _, n in labelled)
    out = []
    for m, (lab, n) in zip(masks, labelled):
        inside = lab[m]
        inv = np.zeros(n + 1)
        if n:
            inv[1:] = 1.0 / (np.bincount(inside, minlength=n + 1)[1:] * total)
        out.append(inv[inside])
    return np.concatenate(out) if out else np.zeros(0)


def aupro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` (so in [0, 1])."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([np.asarray(s, dtype=np.float32).ravel() for s in maps])
    c = curve(scores, labels, region_weights(masks))
    return _area_up_to(c.fpr, c.tpr, fpr_limit) / fpr_limit


def image_metrics(scores, labels) -> dict[str, float]:
    c = curve(scores, labels)
    return {"image_auroc": _auc(c), "image_ap": _ap(c), "image_f1max": _f1max(c)}


def pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC / AP / F1-max over all pixels of all images, and AUPRO@0.3.

    Maps may differ in size between images (keep-aspect, tiling); each must match its mask.
    """
    for m, g in zip(maps, masks):
        if np.shape(m) != np.shape(g):
            raise ValueError(f"anomaly map {np.shape(m)} and mask {np.shape(g)} differ in size")
    scores = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    labels = np.concatenate([np.asarray(g, dtype=bool).ravel() for g in masks])
    c = curve(scores, labels)
    out = {"pixel_auroc": _auc(c), "pixel_ap": _ap(c), "pixel_f1max": _f1max(c)}
    del c
    out["aupro"] = aupro(maps, masks)
    return out


def sampled(c: Curve, points: int = 101, fpr_limit: float = 1.0) -> list[list[float]]:
    """(fpr, tpr) on a regular fpr grid up to `fpr_limit`, for plotting; the step at each fpr is kept
    by taking the highest tpr reached there (curves are monotone)."""
    grid = np.linspace(0.0, fpr_limit, points)
    idx = np.searchsorted(c.fpr, grid, side="right") - 1
    return [[float(x), float(c.tpr[i])] for x, i in zip(grid, idx)]


def curves(scores, labels, maps: list[np.ndarray], masks: list[np.ndarray], points: int = 101) -> dict:
    """Plot-ready image ROC, pixel ROC and PRO (up to PRO_FPR_LIMIT) curves; the same definitions
    as the metrics above, so the areas under them are the reported numbers."""
    labels_px = np.concatenate([np.asarray(g, dtype=bool).ravel() for g in masks])
    scores_px = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    bool_masks = [np.asarray(g, dtype=bool) for g in masks]
    return {"image_roc": sampled(curve(scores, labels), points),
            "pixel_roc": sampled(curve(scores_px, labels_px), points),
            "pro": sampled(curve(scores_px, labels_px, region_weights(bool_masks)), points, PRO_FPR_LIMIT)}

