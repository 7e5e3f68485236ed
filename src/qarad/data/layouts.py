"""Dataset layouts: the one way from (root, category, layout) to the samples of a split.

    mvtec   ROOT/CAT/train/good, ROOT/CAT/test/<type>, ROOT/CAT/ground_truth/<type>/<stem>_mask.png
    visa    ROOT/split_csv/1cls.csv (object, split, label, image, mask; paths relative to ROOT) over
            ROOT/<object>/Data/Images/{Normal,Anomaly} and ROOT/<object>/Data/Masks/Anomaly
    btad    ROOT/NN/train/ok, ROOT/NN/test/ok, ROOT/NN/test/ko, ROOT/NN/ground_truth/ko/<stem>.png|.bmp
    folder  anomalib's Folder: a normal dir, optional abnormal, mask and normal-test dirs (FolderSplit)

`scan_defect_folder` reads one more kind of folder, for real defect shots (data/real_defects.py):
defect images of one type (the folder's name) with their masks in its `masks/` subfolder.

Every scanner returns what `scan_mvtec` returns: `Sample`s whose normal images have the defect
type "good", sorted, with a DatasetError naming the file for each mismatch. `scan` and
`list_categories` are what every verb calls; layout "auto" reads the markers on disk
(`detect_layout`) and falls back to mvtec, whose scanner then says what is missing.

VisA (Zou et al., ECCV 2022) has no defect-type column: its defects have the type "anomaly", and
its masks are read with every nonzero pixel as defect. BTAD (Mishra et al., 2021) names a mask
like its image (same stem, no "_mask"); the original release mixes .bmp and .png for images and
masks (anomalib converts every .bmp to .png before use), so either suffix is accepted.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import is_image_file
from .mvtec import (NORMAL, DatasetError, Sample, images_in, missing_mask, required_images, scan_mvtec,
                    split_folder)

LAYOUTS = ("mvtec", "visa", "btad", "folder")
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = ("normal", "anomaly")
VISA_ANOMALY = "anomaly"  # VisA's one defect type
BTAD_NORMAL = "ok"
BTAD_MASK_SUFFIXES = (".png", ".bmp")
FOLDER_ABNORMAL = "abnormal"  # the folder layout's one defect type, as anomalib labels it
FOLDER_CATEGORY = "folder"  # what list_categories names the folder layout's one category


@dataclass(frozen=True)
class FolderSplit:
    """A plain-folder dataset in the style of anomalib's `Folder`; dirs are relative to the root
    (or absolute). Without `normal_test_dir`, a seeded share of the normal images is held out for
    test (`numpy.random.default_rng(seed)`) and never trained on."""

    normal_dir: str
    abnormal_dir: str | None = None
    mask_dir: str | None = None  # masks named like their abnormal image: <stem>.* or <stem>_mask.*
    normal_test_dir: str | None = None
    test_split_ratio: float = 0.2  # share of normal_dir held out for test when normal_test_dir is None
    seed: int = 0  # of that share: the dataset's, not a run's, so every verb holds out the same images


def resolve_layout(root: str | Path, layout: str = "auto", category: str | None = None,
                   folder: FolderSplit | None = None) -> str:
    """The concrete layout: `layout` itself, or for "auto" "folder" when `folder` is given and
    otherwise what `detect_layout` finds."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}")
    if folder is not None:
        if layout not in ("auto", "folder"):
            raise DatasetError(f"--normal-dir, --abnormal-dir, --mask-dir and --normal-test-dir belong to "
                               f"--layout folder, not --layout {layout}")
        return "folder"
    if layout == "folder":
        raise DatasetError("--layout folder needs --normal-dir (and optionally --abnormal-dir, --mask-dir, "
                           "--normal-test-dir)")
    return detect_layout(root, category) if layout == "auto" else layout


def detect_layout(root: str | Path, category: str | None = None) -> str:
    """visa when ROOT/split_csv/1cls.csv exists, mvtec when CAT/train/good does, btad when
    CAT/train/ok does (CAT: `category`, or any folder of the root); mvtec when none is found."""
    root = Path(root)
    if category is not None:
        categories = [root / category]
    else:
        categories = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    found = [name for name, hit in (("visa", (root / VISA_CSV).is_file()),
                                    ("mvtec", any((c / "train" / NORMAL).is_dir() for c in categories)),
                                    ("btad", any((c / "train" / BTAD_NORMAL).is_dir() for c in categories))) if hit]
    if len(found) > 1:
        raise DatasetError(f"{root}: looks like more than one dataset layout ({', '.join(found)}); "
                           "choose one with --layout")
    return found[0] if found else "mvtec"


def scan(root: str | Path, category: str, split: str, layout: str = "auto", folder: FolderSplit | None = None,
         allow_missing_masks: bool = False) -> list[Sample]:
    """The samples of one split ("train" or "test") of one category, in any layout. For the folder
    layout `category` is only a name (the folders are `folder`'s)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    layout = resolve_layout(root, layout, category, folder)
    if layout == "mvtec":
        return scan_mvtec(root, category, split, allow_missing_masks)
    if layout == "visa":
        return scan_visa(root, category, split, allow_missing_masks)
    if layout == "btad":
        return scan_btad(root, category, split, allow_missing_masks)
    return scan_folder_split(root, folder, split, allow_missing_masks)


def list_categories(root: str | Path, layout: str = "auto", folder: FolderSplit | None = None) -> list[str]:
    """The categories of a dataset root, sorted: folders holding train/ (mvtec, btad), the csv's
    objects (visa), or the folder layout's one category."""
    layout = resolve_layout(root, layout, None, folder)
    root = Path(root)
    if layout == "folder":
        return [FOLDER_CATEGORY]
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    if layout == "visa":
        return sorted({row["object"].strip() for _, row in _visa_rows(root)})
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "train").is_dir())
    if not found:
        normal = NORMAL if layout == "mvtec" else BTAD_NORMAL
        raise DatasetError(f"{root}: no categories found (expected CATEGORY/train/{normal}, the {layout} layout)")
    return found


# ---- VisA --------------------------------------------------------------------------------------
def _visa_rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of ROOT/split_csv/1cls.csv, its columns checked."""
    path = root / VISA_CSV
    if not path.is_file():
        raise DatasetError(f"{path}: VisA split file not found (the visa layout reads ROOT/{VISA_CSV})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in VISA_COLUMNS if c not in [name.strip() for name in reader.fieldnames or []]]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; a VisA split file has the "
                               f"columns {', '.join(VISA_COLUMNS)}")
        rows = []
        for row in reader:
            rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k}))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    for n, row in rows:  # an object names a run folder (benchmark's OUT/runs/OBJECT): a plain name only
        name = row["object"]
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise DatasetError(f"{path} line {n}: object {name!r} is not a plain name (no path separators, "
                               "not '.' or '..')")
    return rows


def _inside(root: Path, relative: str, where: str) -> Path:
    """ROOT/relative for a path read from the split file, which must stay under ROOT: no absolute
    path and no '..' (checked on the text, so a dataset made of symlinks still reads)."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or Path(relative).drive or ".." in parts:
        raise DatasetError(f"{where}: path {relative!r} leaves the dataset root {root}; paths in the split file "
                           "are relative to ROOT and stay inside it")
    return root / relative


def scan_visa(root: str | Path, category: str, split: str, allow_missing_masks: bool = False) -> list[Sample]:
    root = Path(root)
    path = root / VISA_CSV
    rows = _visa_rows(root)
    mine = [(n, row) for n, row in rows if row["object"] == category]
    if not mine:
        objects = sorted({row["object"] for _, row in rows})
        raise DatasetError(f"{path}: no rows for object {category!r}; the objects listed are {', '.join(objects)}")
    seen: dict[Path, tuple[str, int]] = {}
    samples = []
    for n, row in mine:
        where = f"{path} line {n}"
        if row["split"] not in ("train", "test"):
            raise DatasetError(f"{where}: split must be 'train' or 'test', got {row['split']!r}")
        if row["label"] not in VISA_LABELS:
            raise DatasetError(f"{where}: label must be 'normal' or 'anomaly', got {row['label']!r}")
        image = _inside(root, row["image"], where)
        if image in seen and seen[image][0] != row["split"]:
            raise DatasetError(f"{where}: {image} is listed in both the train and the test split (also line "
                               f"{seen[image][1]}); train and test must not overlap")
        seen[image] = (row["split"], n)
        if row["split"] != split:
            continue
        if not image.is_file():
            raise DatasetError(f"{image}: image listed in {where} not found")
        if row["label"] == "normal":
            samples.append(Sample(image, NORMAL))
            continue
        if split == "train":
            raise DatasetError(f"{where}: an anomaly row in the train split; the detectors train on normal "
                               "images only")
        mask = _inside(root, row["mask"], where) if row["mask"] else None
        if mask is None or not mask.is_file():
            if not allow_missing_masks:
                raise missing_mask(image, f"a mask path in {where}" if mask is None else f"{mask}, named in {where}")
            mask = None
        samples.append(Sample(image, VISA_ANOMALY, mask, mask_encoding="nonzero"))
    if not samples:
        raise DatasetError(f"{path}: no {split} rows for object {category!r}")
    return sorted(samples, key=lambda s: (s.defect_type, str(s.image)))


# ---- BTAD --------------------------------------------------------------------------------------
def scan_btad(root: str | Path, category: str, split: str, allow_missing_masks: bool = False) -> list[Sample]:
    cat, split_dir = split_folder(root, category, split,
                                  "the BTAD layout: NN/train/ok, NN/test/ok, NN/test/ko, NN/ground_truth/ko")
    if split == "train":
        images = required_images(split_dir / BTAD_NORMAL, "missing 'train/ok' folder of normal images")
        return [Sample(p, NORMAL) for p in images]
    samples = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        if type_dir.name == BTAD_NORMAL:
            samples += [Sample(p, NORMAL) for p in images_in(type_dir)]
            continue
        masks = _btad_masks(cat / "ground_truth" / type_dir.name)
        for image in images_in(type_dir):
            found = masks.get(image.stem, [])
            if len(found) > 1:
                raise DatasetError(f"{image}: more than one mask with its name ({', '.join(map(str, found))}); "
                                   "keep one")
            if not found and not allow_missing_masks:
                gt = cat / "ground_truth" / type_dir.name / image.stem
                raise missing_mask(image, f"{gt}.png or {gt}.bmp")
            samples.append(Sample(image, type_dir.name, found[0] if found else None))
    if not samples:
        raise DatasetError(f"{split_dir}: no test images found")
    return samples


def _btad_masks(folder: Path) -> dict[str, list[Path]]:
    """stem -> the .png / .bmp masks of that stem in `folder` (suffix case ignored)."""
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if is_image_file(p) and p.suffix.lower() in BTAD_MASK_SUFFIXES:
                out.setdefault(p.stem, []).append(p)
    return out


# ---- plain folders -----------------------------------------------------------------------------
def _folder_images(root: Path, name: str | None, flag: str) -> list[Path]:
    if name is None:
        return []
    return required_images(root / name, f"folder not found ({flag})", f"{flag}; ")


def held_out(n: int, ratio: float, seed: int) -> list[int]:
    """Indices (sorted) of the `ratio` share of n normal images held out for test: at least one
    when ratio > 0, never all of them."""
    if not 0.0 <= ratio < 1.0:
        raise DatasetError(f"--test-split-ratio must be in [0, 1), got {ratio}")
    k = 0 if ratio == 0 else max(1, int(round(ratio * n)))
    if k >= n:
        raise DatasetError(f"holding out {k} of {n} normal images for test leaves none to train on; "
                           "add images, lower --test-split-ratio or give --normal-test-dir")
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


def scan_folder_split(root: str | Path, folder: FolderSplit, split: str,
                      allow_missing_masks: bool = False) -> list[Sample]:
    root = Path(root)
    if folder.mask_dir is not None and folder.abnormal_dir is None:
        raise DatasetError("--mask-dir needs --abnormal-dir (the masks belong to the abnormal images)")
    normal = _folder_images(root, folder.normal_dir, "--normal-dir")
    if folder.normal_test_dir is not None:
        train, test_normal = normal, _folder_images(root, folder.normal_test_dir, "--normal-test-dir")
    else:
        test_idx = set(held_out(len(normal), folder.test_split_ratio, folder.seed))
        train = [p for i, p in enumerate(normal) if i not in test_idx]
        test_normal = [p for i, p in enumerate(normal) if i in test_idx]
    abnormal = _folder_images(root, folder.abnormal_dir, "--abnormal-dir")
    _refuse_overlap(train, test_normal + abnormal, "the train split (--normal-dir)", "the test split")
    _refuse_overlap(test_normal, abnormal, "the normal test images", "the abnormal images (--abnormal-dir)")
    if split == "train":
        return [Sample(p, NORMAL) for p in train]
    masks = _folder_masks(root / folder.mask_dir) if folder.mask_dir is not None else {}
    samples = [Sample(p, NORMAL) for p in test_normal]
    for image in abnormal:
        found = masks.get(image.stem, [])
        if len(found) > 1:
            raise DatasetError(f"{image}: more than one mask for it ({', '.join(map(str, found))}); keep one")
        if not found and not allow_missing_masks:
            where = (f"{root / folder.mask_dir}/{image.stem}.png or {image.stem}_mask.png" if folder.mask_dir
                     else "a --mask-dir")
            raise missing_mask(image, where)
        samples.append(Sample(image, FOLDER_ABNORMAL, found[0] if found else None))
    if not samples:
        raise DatasetError(f"{root / folder.normal_dir}: no test images (no --abnormal-dir, and no normal images "
                           "held out: give --normal-test-dir or a --test-split-ratio above 0)")
    return samples


DEFECT_MASKS = "masks"  # scan_defect_folder: the subfolder holding the masks


def scan_defect_folder(folder: str | Path) -> list[Sample]:
    """Defect images of one type, FOLDER/*.png with masks FOLDER/masks/<stem>.* or <stem>_mask.*;
    the type is the folder's name. A missing mask is an error naming the image."""
    folder = Path(folder)
    images = required_images(folder, "folder of defect images not found")
    masks = _folder_masks(folder / DEFECT_MASKS, f"the masks of the defect images in {folder}")
    samples = []
    for image in images:
        found = masks.get(image.stem, [])
        if len(found) != 1:
            if found:
                raise DatasetError(f"{image}: more than one mask for it ({', '.join(map(str, found))}); keep one")
            raise DatasetError(f"{image}: defect image has no mask (expected {folder / DEFECT_MASKS}/{image.stem}.png "
                               f"or {image.stem}_mask.png)")
        samples.append(Sample(image, folder.name, found[0]))
    return samples


def _refuse_overlap(a: list[Path], b: list[Path], a_name: str, b_name: str) -> None:
    both = sorted({p.resolve() for p in a} & {p.resolve() for p in b})
    if both:
        shown = ", ".join(map(str, both[:3])) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
        raise DatasetError(f"{shown}: in both {a_name} and {b_name}; train and test must not overlap")


def _folder_masks(folder: Path, what: str = "--mask-dir") -> dict[str, list[Path]]:
    """image stem -> masks in `folder` named <stem>.* or <stem>_mask.*"""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found ({what})")
    out: dict[str, list[Path]] = {}
    for p in images_in(folder):
        out.setdefault(p.stem[:-len("_mask")] if p.stem.endswith("_mask") else p.stem, []).append(p)
    return out
