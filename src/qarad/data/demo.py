"""The built-in demo dataset: real texture photographs in the MVTec AD layout, made offline from a seed.

Normal images are crops of the grayscale texture photographs bundled with scikit-image (brick, grass,
gravel). The top half of each 512 px photo feeds train/good and the bottom half feeds test, so no
test pixel was ever seen in training. Every crop covers the same field of view (256 photo px, resized
to `size`), so scale never gives a test image away. Crops get a random flip / 90-degree rotation
(brick keeps its vertical courses: flips and 180 degrees only), a slight gain jitter and a fixed,
slight per-category colour tint.

Test defects are families a procedural scratch/crack/hole/stain/dent renderer does not make, so the
demo never grades a generator on its own output:
  foreign_object  an irregular patch of another bundled photograph, pasted with a feathered edge
  smudge          a blobby region smeared along one direction and darkened
  cut             a straight clean-edged slit of flat dark or bright value with a one-sided lip
Each covers 0.2-5 % of the image, lies fully inside it, and changes exactly the mask pixels.

Every image draws from its own generator keyed by (seed, category, stream, index), so a file's
content does not depend on how many others are made, and a half-written dataset can be completed.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage.draw import polygon as draw_polygon
from skimage.transform import resize

from .io import to_uint8, write_image, write_json
from .mvtec import NORMAL

GENERATOR_VERSION = 1  # bump whenever the rendering changes: old demo.json files then no longer match
DEFECT_TYPES = ("foreign_object", "smudge", "cut")
CONFIG_FILE = "demo.json"

# category -> (photo loader, RGB tint, whether 90-degree rotations keep the texture plausible)
_TEXTURES = {
    "brick": (skdata.brick, (1.06, 0.97, 0.90), False),
    "grass": (skdata.grass, (0.94, 1.05, 0.90), True),
    "gravel": (skdata.gravel, (1.02, 1.00, 0.95), True),
}
_DONORS = {"coffee": skdata.coffee, "chelsea": skdata.chelsea, "astronaut": skdata.astronaut,
           "rocket": skdata.rocket, "coins": skdata.coins}
FIELD_OF_VIEW = 256      # photo pixels per crop side, before resizing to `size`
REFERENCE_SIZE = 256     # defect dimensions below are in pixels at this image size
GAIN_JITTER = 0.05       # normal images: brightness x U(1 - j, 1 + j)
AREA_RANGE = (0.002, 0.05)   # allowed defect area, as a fraction of the image
BLOB_AREA = (0.004, 0.035)   # log-uniform target area of blobby defects
MARGIN = 2               # defects keep this many pixels away from the border
FOREIGN_FEATHER = 2.0    # px over which a pasted patch fades in, inside its mask
SMUDGE_FEATHER = 4.0
SMUDGE_LENGTH = (6, 16)  # px at REFERENCE_SIZE
SMUDGE_DARKEN = (0.70, 0.88)
CUT_WIDTH = (3, 8)       # px at REFERENCE_SIZE
CUT_LENGTH = (30, 120)
MIN_FOREIGN_CONTRAST = 0.12  # mean |patch - texture| a pasted patch must reach to count as visible
MAX_TRIES = 100


@dataclass(frozen=True)
class DemoConfig:
    categories: tuple[str, ...] = ("brick", "grass", "gravel")
    size: int = 256           # side of each square image
    n_train: int = 40         # normal training images per category
    n_test_good: int = 12
    n_test_defect: int = 18   # dealt round-robin across DEFECT_TYPES
    seed: int = 0


@dataclass(frozen=True)
class _DefectSample:
    clean: np.ndarray   # (H, W, 3) uint8, the image before the defect
    image: np.ndarray   # (H, W, 3) uint8, equal to `clean` outside `mask`
    mask: np.ndarray    # (H, W) bool


@dataclass(frozen=True)
class _Job:
    image: Path
    mask: Path | None
    render: Callable[[], tuple[np.ndarray, np.ndarray | None]]


def make_demo_dataset(root: Path, config: DemoConfig = DemoConfig(),
                      on_image: Callable[[], None] | None = None) -> Path:
    """Write (or complete) the demo dataset under `root`; return `root`.

    Files that already exist are kept, so a finished dataset costs nothing to "make" again.
    `root/demo.json` records the config; a root made with a different config is refused.
    `on_image` is called once per image written (a defect image and its mask count as one).
    """
    _check(config)
    root = Path(root)
    record = {"generator_version": GENERATOR_VERSION, **asdict(config), "categories": list(config.categories)}
    meta = root / CONFIG_FILE
    if meta.is_file():
        try:
            stored = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta}: unreadable demo config ({exc}); delete {root} to rebuild it") from None
        if stored != record:
            raise ValueError(f"{root} already holds a demo dataset made with a different config "
                             f"(stored {stored}, requested {record}); use another folder or delete this one")
    else:
        stray = [c for c in config.categories if (root / c).exists()]
        if stray:
            raise ValueError(f"{root} already has folder(s) {', '.join(stray)} but no {CONFIG_FILE}, so they "
                             "were not made by make_demo_dataset; use another folder")
        write_json(meta, record)
    for category in config.categories:
        for job in _jobs(root / category, category, config):
            if job.image.is_file() and (job.mask is None or job.mask.is_file()):
                continue
            image, mask = job.render()
            if job.mask is not None:
                write_image(job.mask, mask)
            write_image(job.image, image)
            if on_image is not None:
                on_image()
    return root


def _check(config: DemoConfig) -> None:
    if not config.categories or len(set(config.categories)) != len(config.categories):
        raise ValueError(f"categories must be non-empty and distinct, got {config.categories!r}")
    unknown = [c for c in config.categories if c not in _TEXTURES]
    if unknown:
        raise ValueError(f"unknown demo categories {unknown}; choose from {sorted(_TEXTURES)}")
    for name in ("size", "n_train", "n_test_good", "n_test_defect", "seed"):
        if not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be an int, got {getattr(config, name)!r}")
    if not 32 <= config.size <= 2048:
        raise ValueError(f"size must be between 32 and 2048, got {config.size}")
    if config.n_train < 1 or config.n_test_good < 0 or config.n_test_defect < 0:
        raise ValueError("need n_train >= 1 and n_test_good, n_test_defect >= 0")
    if config.n_test_good + config.n_test_defect < 1:
        raise ValueError("need at least one test image (n_test_good + n_test_defect >= 1)")
    if config.seed < 0:
        raise ValueError(f"seed must be >= 0, got {config.seed}")


def _jobs(cat: Path, category: str, config: DemoConfig) -> Iterator[_Job]:
    def normal(split: str, stream: int, i: int):
        return lambda: (to_uint8(_normal_image(category, split, _rng(config, category, stream, i), config.size)), None)

    def defect(kind: str, i: int):
        def render():
            sample = _render_defect(config, category, kind, i)
            return sample.image, sample.mask
        return render

    for i in range(config.n_train):
        yield _Job(cat / "train" / NORMAL / f"{i:03d}.png", None, normal("train", 0, i))
    for i in range(config.n_test_good):
        yield _Job(cat / "test" / NORMAL / f"{i:03d}.png", None, normal("test", 1, i))
    for n in range(config.n_test_defect):
        kind, i = DEFECT_TYPES[n % len(DEFECT_TYPES)], n // len(DEFECT_TYPES)
        yield _Job(cat / "test" / kind / f"{i:03d}.png", cat / "ground_truth" / kind / f"{i:03d}_mask.png",
                   defect(kind, i))


def _rng(config: DemoConfig, category: str, stream: int, index: int) -> np.random.Generator:
    # crc32, not hash(): str hashes change between interpreter runs
    return np.random.default_rng([config.seed, zlib.crc32(category.encode()), stream, index])


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as read-only float32 in [0, 1], (H, W) or (H, W, 3)."""
    loader = _TEXTURES[name][0] if name in _TEXTURES else _DONORS[name]
    arr = loader().astype(np.float32) / 255.0
    arr.setflags(write=False)
    return arr


def _normal_image(category: str, split: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free (size, size, 3) float32 crop from the photo half that belongs to `split`."""
    _, tint, rotate = _TEXTURES[category]
    photo = _photo(category)
    half = photo.shape[0] // 2
    rows = photo[:half] if split == "train" else photo[half:]
    fov = min(FIELD_OF_VIEW, rows.shape[0], rows.shape[1])
    y = rng.integers(0, rows.shape[0] - fov + 1)
    x = rng.integers(0, rows.shape[1] - fov + 1)
    crop = rows[y:y + fov, x:x + fov]
    crop = np.rot90(crop, rng.integers(4) if rotate else 2 * rng.integers(2))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if fov != size:
        crop = resize(crop, (size, size), order=1, anti_aliasing=fov > size, preserve_range=True)
    gain = 1.0 + rng.uniform(-GAIN_JITTER, GAIN_JITTER)
    rgb = crop[..., None] * (gain * np.asarray(tint, dtype=np.float32))  # (size, size, 3)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _render_defect(config: DemoConfig, category: str, kind: str, index: int) -> _DefectSample:
    """One defect test image with its clean original; only the mask pixels differ."""
    rng = _rng(config, category, 2 + DEFECT_TYPES.index(kind), index)
    clean = _normal_image(category, "test", rng, config.size)
    render = {"foreign_object": _foreign_object, "smudge": _smudge, "cut": _cut}[kind]
    defected, mask = render(clean, rng)
    clean8 = to_uint8(clean)
    image = np.where(mask[..., None], to_uint8(defected), clean8)
    return _DefectSample(clean8, image, mask)


def _area_ok(mask: np.ndarray) -> bool:
    return AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1]


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular, smooth-edged (size, size) bool region inside the margin, of allowed area."""
    angles = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    for _ in range(MAX_TRIES):
        area = np.exp(rng.uniform(*np.log(BLOB_AREA))) * size * size
        radial = np.ones_like(angles)
        for k in range(2, 6):  # a few low harmonics: lobes, not spikes
            radial += rng.uniform(0.0, 0.3) / (k - 1) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
        radial = np.maximum(radial, 0.3)
        aspect, theta = rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
        px, py = radial * np.cos(angles), aspect * radial * np.sin(angles)
        xs = px * np.cos(theta) - py * np.sin(theta)
        ys = px * np.sin(theta) + py * np.cos(theta)
        shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        scale = np.sqrt(area / shoelace)
        xs, ys = xs * scale, ys * scale
        lo_y, hi_y = MARGIN - ys.min(), size - 1 - MARGIN - ys.max()
        lo_x, hi_x = MARGIN - xs.min(), size - 1 - MARGIN - xs.max()
        if hi_y < lo_y or hi_x < lo_x:
            continue
        cy, cx = rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x)
        mask = np.zeros((size, size), dtype=bool)
        rr, cc = draw_polygon(ys + cy, xs + cx, shape=mask.shape)
        mask[rr, cc] = True
        if _area_ok(mask):
            return mask
    raise RuntimeError(f"could not place a defect region in a {size} px image")


def _feather(mask: np.ndarray, width: float) -> np.ndarray:
    """Blend weight (H, W, 1): above 0.5 on every mask pixel, rising to 1 `width` px inside; 0 outside."""
    inside = ndimage.distance_transform_edt(mask)  # 1 on the mask's edge pixels
    return np.where(mask, np.minimum(1.0, 0.5 + 0.5 * inside / width), 0.0)[..., None].astype(np.float32)


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _donor_patch(rng: np.random.Generator, h: int, w: int, size: int) -> np.ndarray:
    """An (h, w, 3) float32 piece of a random donor photograph, at roughly the texture's scale."""
    photo = _photo(str(rng.choice(sorted(_DONORS))))
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    zoom = size / REFERENCE_SIZE * rng.uniform(0.5, 1.2)  # output px per donor px
    sh = min(photo.shape[0], max(1, round(h / zoom)))
    sw = min(photo.shape[1], max(1, round(w / zoom)))
    y, x = rng.integers(0, photo.shape[0] - sh + 1), rng.integers(0, photo.shape[1] - sw + 1)
    piece = np.rot90(photo[y:y + sh, x:x + sw], rng.integers(4))
    return resize(piece, (h, w), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _foreign_object(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    mask = _blob(rng, size)
    ys, xs = _bbox(mask)
    region = mask[ys, xs]
    best, best_contrast = None, -1.0
    for _ in range(20):  # skip donor pieces that happen to look like the texture (sky, dark background)
        patch = _donor_patch(rng, region.shape[0], region.shape[1], size)
        contrast = float(np.abs(patch - clean[ys, xs])[region].mean())
        if contrast > best_contrast:
            best, best_contrast = patch, contrast
        if contrast >= MIN_FOREIGN_CONTRAST:
            break
    donor = clean.copy()
    donor[ys, xs] = best
    weight = _feather(mask, FOREIGN_FEATHER)
    return clean * (1 - weight) + donor * weight, mask


def _smear_kernel(length: float, theta: float) -> np.ndarray:
    """A one-sided line kernel: output pixel = mean of the pixels up to `length` px behind it."""
    radius = int(np.ceil(length)) + 1
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.float64)
    for t in np.linspace(0.0, length, 4 * int(np.ceil(length)) + 1):
        y, x = radius + t * np.sin(theta), radius + t * np.cos(theta)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0  # bilinear splat of one sample point
        kernel[y0, x0] += (1 - fy) * (1 - fx)
        kernel[y0 + 1, x0] += fy * (1 - fx)
        kernel[y0, x0 + 1] += (1 - fy) * fx
        kernel[y0 + 1, x0 + 1] += fy * fx
    return kernel / kernel.sum()


def _smudge(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    mask = _blob(rng, size)
    length = max(3.0, rng.uniform(*SMUDGE_LENGTH) * size / REFERENCE_SIZE)
    kernel = _smear_kernel(length, rng.uniform(0, 2 * np.pi))
    pad = kernel.shape[0]
    ys, xs = _bbox(mask)
    y0, y1 = max(0, ys.start - pad), min(size, ys.stop + pad)
    x0, x1 = max(0, xs.start - pad), min(size, xs.stop + pad)
    window = clean[y0:y1, x0:x1]
    smeared = np.stack([ndimage.convolve(window[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)
    out = clean.copy()
    out[y0:y1, x0:x1] = smeared * rng.uniform(*SMUDGE_DARKEN)
    weight = _feather(mask, SMUDGE_FEATHER)
    return clean * (1 - weight) + out * weight, mask


def _cut(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    scale = size / REFERENCE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # pixel centres
    for _ in range(MAX_TRIES):
        width = max(2.0, rng.uniform(*CUT_WIDTH) * scale)
        length = max(6.0, rng.uniform(*CUT_LENGTH) * scale)
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        half_x = abs(c) * length / 2 + abs(s) * width / 2  # half extents of the rotated rectangle
        half_y = abs(s) * length / 2 + abs(c) * width / 2
        lo_x, hi_x = MARGIN + half_x, size - 1 - MARGIN - half_x
        lo_y, hi_y = MARGIN + half_y, size - 1 - MARGIN - half_y
        if hi_x < lo_x or hi_y < lo_y:
            continue
        cy, cx = rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x)
        along = (xx - cx) * c + (yy - cy) * s
        across = -(xx - cx) * s + (yy - cy) * c
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
        if _area_ok(mask):
            break
    else:
        raise RuntimeError(f"could not place a cut in a {size} px image")
    dark = rng.random() < 0.5
    fill = rng.uniform(0.02, 0.08) if dark else rng.uniform(0.90, 0.97)
    lip = rng.uniform(0.70, 0.85) if dark else rng.uniform(0.25, 0.40)  # light catching one edge
    value = np.where(across > width / 2 - 1.0, lip, fill)[..., None]
    out = np.where(mask[..., None], value, clean).astype(np.float32)
    return out, mask
