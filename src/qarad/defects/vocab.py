"""The defect vocabulary shared by the renderer, the prompt grammar and the mask proposals.

Kept in one dependency-free module so that renderer, prompts and masks can all import it
without import cycles.
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("scratch", "crack", "hole", "stain", "dent", "break", "discoloration", "fray", "print_line")
# Not a renderer family: the label the DRAEM-style baseline (baselines.perlin_texture) gives its
# samples, so that every Rendered carries a valid DefectParams.
BASELINE_FAMILY = "foreign_texture"

SIZES = ("small", "medium", "large")
ORIENTATIONS = ("horizontal", "vertical", "diagonal", "none")
POLARITIES = ("dark", "bright")
CONTRASTS = ("faint", "strong")

# Shapes each family is sampled with; the prompt grammar has words for every one of them.
FAMILY_SHAPES = {
    "scratch": ("thin", "wide"),
    "crack": ("branching", "thin"),
    "hole": ("round", "elongated"),
    "stain": ("round", "irregular"),
    "dent": ("round", "elongated"),
    "break": ("irregular", "elongated"),
    "discoloration": ("round", "irregular"),
    "fray": ("thin", "wide"),
    "print_line": ("gap", "bridge"),  # missing segment of a track vs. extra copper/ink between tracks
    BASELINE_FAMILY: ("irregular",),
}
SHAPES = tuple(sorted({s for shapes in FAMILY_SHAPES.values() for s in shapes}))

# Families drawn along a path; the others are drawn as a blob around a point.
STROKE_FAMILIES = ("scratch", "crack", "fray", "print_line")
# Families whose prompt and render use a colour name.
COLOURED_FAMILIES = ("stain", "discoloration")

# Reference RGB of each colour name (linear-ish sRGB in [0, 1]); the renderer rescales it to
# the luminance the contrast calls for, so only its hue and saturation matter.
COLOURS = {
    "rust": (0.60, 0.26, 0.08),
    "brown": (0.42, 0.27, 0.14),
    "yellow": (0.86, 0.74, 0.20),
    "blue": (0.18, 0.34, 0.82),
    "green": (0.22, 0.56, 0.24),
    "red": (0.80, 0.14, 0.12),
}

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709 luminance weights
