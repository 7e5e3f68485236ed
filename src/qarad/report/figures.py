"""Small image figures without matplotlib: heat-map colouring, overlays, mask outlines."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Piecewise-linear "turbo-like" colour ramp: dark blue -> cyan -> yellow -> red.
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0.19, 0.07, 0.23], [0.16, 0.55, 0.95], [0.35, 0.95, 0.45], [0.98, 0.73, 0.2], [0.75, 0.05, 0.02]])


def colourise(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB float."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)


def normalise(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Map scores to [0, 1] so that the decision threshold sits at 0.5 on every image."""
    if not np.isfinite(threshold) or threshold <= 0:
        top = float(anomaly_map.max()) or 1.0
        return anomaly_map / top
    return np.clip(anomaly_map / (2.0 * threshold), 0.0, 1.0)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, threshold: float, alpha: float = 0.55) -> np.ndarray:
    """Blend a heat map onto an (H, W, 3) image; weak scores stay mostly transparent."""
    norm = normalise(anomaly_map, threshold)
    a = alpha * np.clip(norm * 1.5 - 0.1, 0.0, 1.0)[..., None]
    return image * (1 - a) + colourise(norm) * a


def outline(image: np.ndarray, mask: np.ndarray, colour=(0.1, 1.0, 0.1)) -> np.ndarray:
    """Draw the 1-px boundary of a boolean mask onto an image."""
    if not mask.any():
        return image
    edge = mask & ~ndimage.binary_erosion(mask)
    edge = ndimage.binary_dilation(edge, iterations=max(1, min(mask.shape) // 256))
    out = image.copy()
    out[edge] = colour
    return out
