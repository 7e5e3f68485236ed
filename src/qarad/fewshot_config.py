"""Which real defect shots a few-shot fit or detector takes, torch-free: `qarad fit`, `train` and
`copy-paste` build their --shots / --shot-seed flags from these fields (flags.py), and
data/real_defects.select_real_defects draws the shots with them."""
from __future__ import annotations

from dataclasses import dataclass

from .flags import flag


@dataclass(frozen=True)
class ShotConfig:
    shots: int = flag(5, "real defect images per type (K; default 5): up to K per type join the fitting corpus "
                         "or the detector's training, and `qarad eval` leaves them out of the test split")
    shot_seed: int = flag(0, "seed of which K images per type are chosen (default 0)")

    def __post_init__(self):
        if self.shots < 1:
            raise ValueError(f"--shots must be at least 1, got {self.shots}")
