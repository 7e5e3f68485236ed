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


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def required_images(folder: Path, missing: str, context: str = "") -> list[Path]:
    """The images of `folder`; a missing folder (`missing` says what it should be) or one without
    images is an error naming it."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {missing}")
    images = images_in(folder)
    if not images:
        raise DatasetError(f"{folder}: no images found ({context}looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


def split_folder(root: str | Path, category: str, split: str, expected: str) -> tuple[Path, Path]:
    """(category folder, its split folder), each checked to exist; `expected` names the layout."""
    cat = Path(root) / category
    if not cat.is_dir():
        raise DatasetError(f"{cat}: category folder not found")
    split_dir = cat / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: missing '{split}' folder (expected {expected})")
    return cat, split_dir


def missing_mask(image: Path, expected: str) -> DatasetError:
    return DatasetError(f"{image}: defect image has no mask (expected {expected}); "
                        "add it, or pass --allow-missing-masks to use it for image metrics only")


def scan_mvtec(root: str | Path, category: str, split: str, allow_missing_masks: bool = False) -> list[Sample]:
    """List the samples of one split ("train" or "test") of one category.

    A defect image without a mask is an error unless `allow_missing_masks` (then its mask is None
    and it counts for image metrics only). Empty masks are legal: real datasets have them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cat, split_dir = split_folder(root, category, split, "the MVTec AD layout")
    if split == "train":
        images = required_images(split_dir / NORMAL, "missing 'train/good' folder of normal images")
        return [Sample(p, NORMAL) for p in images]
    samples: list[Sample] = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        for img in images_in(type_dir):
            if type_dir.name == NORMAL:
                samples.append(Sample(img, NORMAL))
                continue
            mask = cat / "ground_truth" / type_dir.name / f"{img.stem}_mask.png"
            if not mask.is_file():
                if not allow_missing_masks:
                    raise missing_mask(img, str(mask))
                mask = None
            samples.append(Sample(img, type_dir.name, mask))
    if not samples:
        raise DatasetError(f"{split_dir}: no test images found")
    return samples


def scan_folder(folder: str | Path) -> list[Path]:
    return required_images(Path(folder), "folder not found")


def expand_images(items: list[Path]) -> list[Path]:
    """Image files and folders of images -> the image files, in the order given (a folder's sorted)."""
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found = images_in(p)
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
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"max_train_images must be a whole number >= 1, got {limit!r}")
    if limit is None or limit >= len(samples):
        return list(samples)
    picked = np.random.RandomState(seed).choice(len(samples), limit, replace=False)
    return [samples[i] for i in sorted(picked)]
