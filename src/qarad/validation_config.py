"""The validation split's setting (detection/validation.py), torch-free so that the CLI builds its flag."""
from __future__ import annotations

from dataclasses import dataclass

from .flags import flag

VAL_SHARE = 0.15  # why 15%: detection/validation.py's docstring (set sizes, never a test metric)


@dataclass(frozen=True)
class ValidationConfig:
    val_share: float = flag(VAL_SHARE, help="share of the normal training images held out as the validation split "
                                            "(never in the bank or the head's training; 0: no split, the run as "
                                            "before the split existed). Default 0.15")

    def __post_init__(self):
        if not 0.0 <= self.val_share < 1.0:
            raise ValueError(f"--val-share must be in [0, 1), got {self.val_share}")
