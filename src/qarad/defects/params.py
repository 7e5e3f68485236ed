"""DefectParams: what the procedural renderer draws and what its prompt describes (renderer.py,
prompts.py); on its own so that both read it and neither imports the other."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .vocab import BASELINE_FAMILY, COLOURS, CONTRASTS, FAMILIES, ORIENTATIONS, POLARITIES, SHAPES, SIZES


@dataclass(frozen=True)
class DefectParams:
    """What to draw. The categorical fields drive the prompt; the numeric ones (filled in by
    `sample_params` or, when left None, by `render`) make each render reproducible from its
    record."""

    family: str
    size: str
    shape: str
    orientation: str
    polarity: str
    contrast: str
    colour: str | None = None
    amplitude: float | None = None  # contrast in local luminance std
    extent: float | None = None  # fraction of the region's room used
    width: float | None = None  # stroke / rim width, px
    angle: float | None = None  # degrees, 0 = horizontal, 90 = vertical
    aspect: float | None = None  # elongation of blob-like defects
    count: int | None = None  # scratch strands, crack branches, fray fibres
    opacity: float | None = None  # how much a stain / foreign texture covers the material

    def __post_init__(self):
        checks = (("family", FAMILIES + (BASELINE_FAMILY,)), ("size", SIZES), ("shape", SHAPES),
                  ("orientation", ORIENTATIONS), ("polarity", POLARITIES), ("contrast", CONTRASTS))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"DefectParams.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"DefectParams.colour must be None or one of {', '.join(COLOURS)}; got {self.colour!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DefectParams":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DefectParams fields: {', '.join(sorted(unknown))}")
        return cls(**data)
