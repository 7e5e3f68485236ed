"""The pieces every report is built from: metric tables, curve plots, heat-map and synthetic-sample cards.

`pages.py` (the eval report, the synth gallery) and `demo.py` (the demo report) put them together.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.io import read_image, read_mask
from ..metrics import LABELS, METRICS, PRO_FPR_LIMIT
from .figures import outline, overlay
from .plots import line_plot

Card = tuple[np.ndarray, str]  # (figure, caption), as Report.gallery takes them
# metrics.curves key -> plot title, y label, fpr range
CURVE_PLOTS = (("image_roc", "image ROC", "TPR", 1.0), ("pixel_roc", "pixel ROC", "TPR", 1.0),
               ("pro", f"PRO (to FPR {PRO_FPR_LIMIT:g})", "PRO", PRO_FPR_LIMIT))
METRIC_HEADER = [LABELS[k] for k in METRICS]


def metric_cells(m: dict) -> list[float]:
    """One table row's metric values, in METRIC_HEADER order."""
    return [float(m[k]) for k in METRICS]


def per_type_rows(overall: dict, per_type: dict) -> list[list]:
    """[defect type, images, metrics...] per type (each with the normal images), then ALL."""
    return [[label, str(m["n_images"]), *metric_cells(m)] for label, m in [*per_type.items(), ("ALL", overall)]]


def curve_plots(curves_by_name: dict[str, dict]) -> list[str]:
    """Image ROC, pixel ROC and PRO as inline SVG, one series per name (e.g. per method);
    names whose curves are empty (one class only) are left out."""
    return [line_plot(title, {name: c[key] for name, c in curves_by_name.items() if c.get(key)}, "FPR", y_label,
                      x_max) for key, title, y_label, x_max in CURVE_PLOTS]


def heat_card(image_path: str | Path, anomaly_map: np.ndarray, threshold: float, mask_path: str | Path | None,
              caption: str) -> Card:
    """The image with its heat map blended in and the ground truth outlined in green."""
    image = read_image(image_path)
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(f"{image_path}: image {image.shape[:2]} and its anomaly map {anomaly_map.shape} differ")
    shown = overlay(image, anomaly_map, threshold)
    if mask_path is not None:
        shown = outline(shown, read_mask(mask_path, anomaly_map.shape))
    return shown, caption


def verdict(score: float, threshold: float) -> str:
    return "defect" if score > threshold else "normal"


def synth_card(synth_dir: Path, entry: dict, caption: str) -> Card:
    """A synthetic sample (a manifest entry of a `qarad synth` folder) with its mask outlined in green."""
    image = read_image(Path(synth_dir) / entry["image"])
    return outline(image, read_mask(Path(synth_dir) / entry["mask"], image.shape[:2])), caption


def qaw_text(entry: dict) -> str:
    return "not scored" if entry.get("score") is None else f"QAW {entry['score']:.2f}"


def prompt_label(entry: dict, quoted: bool = False) -> str:
    """A sample's prompt as the gallery names it: A, or A -> B @ mix when it was interpolated
    (`qarad synth --prompt-b B --mix F`)."""
    q = (lambda t: f"\u201c{t}\u201d") if quoted else (lambda t: t)  # noqa: E731
    if entry.get("prompt_b") is None:
        return q(entry["prompt"])
    return f"{q(entry['prompt'])} -> {q(entry['prompt_b'])} @ {entry['mix']:.2f}"
