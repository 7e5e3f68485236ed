"""Turn an MVTec-AD-layout folder (or a plain folder of images) into a list of samples.

Layout: CAT/train/good/*, CAT/test/<type>/*, CAT/ground_truth/<type>/<stem>_mask.png.
These functions only look at file names; decoding happens later, one image at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, is_image_file

NORMAL = "good"


class DatasetError(ValueError):
    """The folder does not have the layout we need; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    image: Path
    defect_type: str  # "good" for normal images
    mask: Path | None = None  # None for normal images (all-normal ground truth)
    mask_encoding: str = "binary"  # how read_mask reads it: "binary" (0/255, 0/1) or "nonzero" (VisA)

    @property
    def label(self) -> int:
        return 0 if self.defect_type == NORMAL else 1


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def scan_mvtec(root: str | Path, category: str, split: str, allow_missing_masks: bool = False) -> list[Sample]:
    """List the samples of one split ("train" or "test") of one category.

    A defect image without a mask is an error unless `allow_missing_masks` (then its mask is None
    and it counts for image metrics only). Empty masks are legal: real datasets have them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cat = Path(root) / category
    if not cat.is_dir():
        raise DatasetError(f"{cat}: category folder not found")
    split_dir = cat / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: missing '{split}' folder (expected the MVTec AD layout)")
    if split == "train":
        good = split_dir / NORMAL
        if not good.is_dir():
            raise DatasetError(f"{good}: missing 'train/good' folder of normal images")
        images = _images_in(good)
        if not images:
            raise DatasetError(f"{good}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return [Sample(p, NORMAL) for p in images]
    samples: list[Sample] = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        for img in _images_in(type_dir):
            if type_dir.name == NORMAL:
                samples.append(Sample(img, NORMAL))
                continue
            mask = cat / "ground_truth" / type_dir.name / f"{img.stem}_mask.png"
            if not mask.is_file():
                if not allow_missing_masks:
                    raise DatasetError(f"{img}: defect image has no mask (expected {mask}); "
                                       "add it, or pass --allow-missing-masks to use it for image metrics only")
                mask = None
            samples.append(Sample(img, type_dir.name, mask))
    if not samples:
        raise DatasetError(f"{split_dir}: no test images found")
    return samples


def scan_folder(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    images = _images_in(folder)
    if not images:
        raise DatasetError(f"{folder}: no images found")
    return images


def expand_images(items: list[Path]) -> list[Path]:
    """Image files and folders of images -> the image files, in the order given (a folder's sorted)."""
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise DatasetError(f"{p}: no images found")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    return out


def subsample(samples: list, limit: int | None, seed: int = 0) -> list:
    """A reproducible subset of at most `limit` items: RandomState(seed).choice over the sorted list."""
    if limit is None or limit >= len(samples):
        return list(samples)
    picked = np.random.RandomState(seed).choice(len(samples), limit, replace=False)
    return [samples[i] for i in sorted(picked)]
