"""Drawing primitives for the procedural defects: strokes, blobs, noise and paths inside a region.

Coordinates are (y, x) pixel centres. Angles are in degrees, 0 = horizontal, 90 = vertical;
positive angles rise to the right on screen (y grows downwards, hence the minus in `direction`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

_SEGMENTS_PER_BOX = 12  # stroke segments evaluated together in one bounding box
_TWO_PI = 2.0 * np.pi


def direction(angle: float) -> np.ndarray:
    """Unit vector (dy, dx) pointing along `angle`."""
    a = np.deg2rad(angle)
    return np.array([-np.sin(a), np.cos(a)])


def normal(angle: float) -> np.ndarray:
    """Unit vector (dy, dx) perpendicular to `direction(angle)`."""
    a = np.deg2rad(angle)
    return np.array([np.cos(a), np.sin(a)])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit std (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def resample(points: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Polyline resampled at uniform arc-length `spacing` (keeps both end points)."""
    points = np.asarray(points, np.float64)
    if len(points) < 2:
        return points.copy()
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if arc[-1] < 1e-9:
        return points[:1].copy()
    t = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / spacing)) + 1))
    return np.column_stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])])


def random_walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
                step: float = 1.5, turn: float = 15.0) -> np.ndarray:
    """A path that wanders: each step turns by N(0, turn) degrees."""
    n = max(2, int(round(length / step)) + 1)
    headings = heading + np.concatenate([[0.0], np.cumsum(rng.normal(0.0, turn, n - 2))])
    steps = np.stack([direction(h) * step for h in headings])
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def stroke_alpha(shape: tuple[int, int], strokes: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Antialiased coverage (H, W) of polylines; the maximum over all strokes.

    Each stroke is (points (N, 2), width (N,) px, weight (N,) in [0, 1]), widths and weights
    interpolated along the path. A pixel at distance d from the centreline gets
    min(w, clip(w/2 + 0.5 - d, 0, 1)): a box filter of the cross-section, so strokes thinner
    than a pixel fade instead of aliasing into dotted lines.
    """
    alpha = np.zeros(shape, np.float32)
    for points, width, weight in strokes:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        width = np.broadcast_to(np.asarray(width, np.float64), (len(pts),)).copy()
        weight = np.broadcast_to(np.asarray(weight, np.float64), (len(pts),)).copy()
        if len(pts) == 1:  # a dot: a degenerate segment
            pts, width, weight = np.vstack([pts, pts + 1e-3]), np.repeat(width, 2), np.repeat(weight, 2)
        pad = width.max() / 2.0 + 2.0
        # Consecutive segments lie close together: evaluate each run of them only in its own
        # bounding box, so cost grows with the stroke's area, not (image area x segments).
        for s in range(0, len(pts) - 1, _SEGMENTS_PER_BOX):
            _cover_segments(alpha, pts[s:s + _SEGMENTS_PER_BOX + 1], width[s:s + _SEGMENTS_PER_BOX + 1],
                            weight[s:s + _SEGMENTS_PER_BOX + 1], pad)
    return alpha


def _cover_segments(alpha: np.ndarray, pts: np.ndarray, width: np.ndarray, weight: np.ndarray, pad: float) -> None:
    """Max-accumulate the coverage of the polyline `pts` into `alpha`, in its bounding box."""
    h_img, w_img = alpha.shape
    y0, y1 = max(0, int(np.floor(pts[:, 0].min() - pad))), min(h_img, int(np.ceil(pts[:, 0].max() + pad)) + 1)
    x0, x1 = max(0, int(np.floor(pts[:, 1].min() - pad))), min(w_img, int(np.ceil(pts[:, 1].max() + pad)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    pix = np.column_stack([yy.ravel(), xx.ravel()]).astype(np.float64)  # (P, 2)
    start, seg = pts[:-1], np.diff(pts, axis=0)
    rel = pix[:, None, :] - start[None]  # (P, k, 2)
    t = np.clip((rel * seg[None]).sum(-1) / ((seg ** 2).sum(1) + 1e-12)[None], 0.0, 1.0)
    d2 = ((rel - t[..., None] * seg[None]) ** 2).sum(-1)  # (P, k)
    rows, j = np.arange(len(pix)), d2.argmin(1)
    tj = t[rows, j]
    w = width[j] * (1 - tj) + width[j + 1] * tj
    g = weight[j] * (1 - tj) + weight[j + 1] * tj
    cover = np.minimum(w, np.clip(w / 2 + 0.5 - np.sqrt(d2[rows, j]), 0.0, 1.0)) * g
    window = alpha[y0:y1, x0:x1]
    np.maximum(window, cover.reshape(window.shape).astype(np.float32), out=window)


def radial_profile(rng: np.random.Generator, irregularity: float, jag: float = 0.0,
                   harmonics: int = 5, vertices: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Outline radius factor r(theta) on a 0..2pi grid: smooth low harmonics for wobbly blobs,
    plus piecewise-linear random vertices (`jag`) for sharp, broken outlines."""
    grid = np.linspace(0.0, _TWO_PI, 361)
    r = np.ones_like(grid)
    for k in range(2, harmonics + 1):
        r += irregularity / k * rng.standard_normal() * np.cos(k * grid + rng.uniform(0, _TWO_PI))
    if jag > 0:
        thetas = np.sort(rng.uniform(0.0, _TWO_PI, vertices))
        r += np.interp(grid, thetas, rng.uniform(-jag, jag, vertices), period=_TWO_PI)
    return grid, np.clip(r, 0.35, 1.8)


def shape_field(shape: tuple[int, int], centre: np.ndarray, radius: float, aspect: float = 1.0, angle: float = 0.0,
                profile: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised radius rn (< 1 inside) of an ellipse with semi-axes (radius * aspect along
    `angle`, radius across), its outline optionally bent by a radial profile.

    Returns (rn, u, v): u and v are the pixel offsets along and across `angle`, for shading.
    (1 - rn) * radius approximates the distance to the outline in pixels.
    """
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    dy, dx = yy - np.float32(centre[0]), xx - np.float32(centre[1])
    d, n = direction(angle).astype(np.float32), normal(angle).astype(np.float32)
    u, v = dy * d[0] + dx * d[1], dy * n[0] + dx * n[1]
    rho = np.sqrt((u / aspect) ** 2 + v ** 2)
    if profile is not None:
        theta = np.arctan2(v, u / aspect) % _TWO_PI
        rho = rho / np.interp(theta, profile[0], profile[1]).astype(np.float32)
    return rho / np.float32(max(radius, 1e-3)), u, v


def distance_inside(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest pixel outside it (the frame counts as outside)."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def interior_point(rng: np.random.Generator, region: np.ndarray, dist: np.ndarray | None = None,
                   spread: float = 0.6) -> tuple[np.ndarray, float]:
    """A random point among the region's most interior pixels (distance >= spread * max).

    Returns ((y, x), its distance to the region's outline).
    """
    dist = distance_inside(region) if dist is None else dist
    top = float(dist.max())
    if top <= 0:
        raise ValueError("region is empty")
    ys, xs = np.nonzero(dist >= spread * top)
    i = int(rng.integers(len(ys)))
    return np.array([ys[i], xs[i]], np.float64), float(dist[ys[i], xs[i]])


def principal_angle(region: np.ndarray) -> float:
    """Angle (degrees) of the region's long axis."""
    ys, xs = np.nonzero(region)
    if len(ys) < 2:
        return 0.0
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    dy, dx = evecs[:, np.argmax(evals)]
    return float(np.rad2deg(np.arctan2(-dy, dx)) % 180.0)


def centreline(region: np.ndarray, angle: float) -> np.ndarray:
    """A path (N, 2) running through the middle of the region along `angle`.

    Region pixels are binned by their position along `angle`; each bin contributes the mean of
    their cross positions, so the path follows curved bands. The longest run of path points that
    lie inside the region is returned (at least one point).
    """
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        raise ValueError("region is empty")
    centre = np.array([ys.mean(), xs.mean()])
    rel = np.column_stack([ys, xs]) - centre
    d, n = direction(angle), normal(angle)
    along, across = rel @ d, rel @ n
    bins = np.floor(along - along.min()).astype(np.int64)
    counts = np.bincount(bins)
    used = np.nonzero(counts)[0]
    across_mean = np.bincount(bins, across)[used] / counts[used]
    if len(across_mean) > 5:
        across_mean = ndimage.uniform_filter1d(across_mean, size=5, mode="nearest")
    points = centre + (along.min() + used + 0.5)[:, None] * d + across_mean[:, None] * n
    iy = np.clip(np.round(points[:, 0]).astype(int), 0, region.shape[0] - 1)
    ix = np.clip(np.round(points[:, 1]).astype(int), 0, region.shape[1] - 1)
    inside = region[iy, ix]
    best, best_len, start = None, 0, None
    for i, ok in enumerate(np.append(inside, False)):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start > best_len:
                best, best_len = (start, i), i - start
            start = None
    if best is None:
        dist = distance_inside(region)
        return np.array([np.unravel_index(int(dist.argmax()), dist.shape)], np.float64)
    return points[best[0]:best[1]]


def ray_extent(region: np.ndarray, centre: np.ndarray, angle: float, limit: float) -> float:
    """How far (px, up to `limit`) one can go from `centre` both ways along `angle` inside the region."""
    d = direction(angle)
    steps = np.arange(0.0, limit + 0.5, 0.5)
    reach = limit
    for sign in (1.0, -1.0):
        pts = centre + sign * steps[:, None] * d
        iy, ix = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        ok = (iy >= 0) & (iy < region.shape[0]) & (ix >= 0) & (ix < region.shape[1])
        ok[ok] = region[iy[ok], ix[ok]]
        out = np.nonzero(~ok)[0]
        if len(out):
            reach = min(reach, steps[out[0]])
    return float(reach)
