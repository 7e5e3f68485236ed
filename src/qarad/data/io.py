"""Image and mask reading with explicit, file-naming errors, and atomic writes.

Every image is returned as float32 RGB in [0, 1] (H, W, 3), whatever its mode on disk:
grayscale, palette, RGBA/LA (alpha composited onto black), 16-bit and 32-bit integer, float.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Refuse before decoding: 100 Mpx of float32 RGB is already 1.2 GB.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # we do our own, clearer check against MAX_PIXELS


class ImageError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class OutputError(ValueError):
    """An output file or folder that cannot be written; the message names it and what is in the way."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@contextmanager
def _opened(path: str | os.PathLike, max_pixels: int) -> Iterator[Image.Image]:
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, f"image is {w}x{h} = {w * h} px, over the limit of {max_pixels} px "
                                       "(raise qarad.data.io.MAX_PIXELS if this is intended)")
            if w == 0 or h == 0:
                raise ImageError(path, f"image has zero size {w}x{h}")
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # PIL warns (not raises) on some corrupt files
                img.load()
            yield img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        raise ImageError(path, f"cannot decode image ({exc}); the file may be truncated or corrupt") from None


def _to_float(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array in [0, 1], shape (H, W) or (H, W, C)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif img.mode == "1":
        img = img.convert("L")
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535):
        return arr.astype(np.float32) / 65535.0
    if img.mode == "I":
        return arr.astype(np.float32) / float(2**32 - 1)
    if img.mode == "F":
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    return arr.astype(np.float32) / 255.0


def _reduced(img: Image.Image, factor: int) -> Image.Image:
    """`img` averaged over factor x factor pixel blocks (PIL reduce; modes it refuses converted first)."""
    if factor <= 1:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")  # same values: _to_float scales "I" up to 65535 as it does I;16
    return img.reduce(factor)


def read_image(path: str | os.PathLike, max_pixels: int | None = None, reduce: int = 1) -> np.ndarray:
    """Read any supported image as float32 RGB (H, W, 3) in [0, 1]. `reduce` > 1 averages reduce x reduce
    pixel blocks right after decoding (ceil(H / reduce) x ceil(W / reduce) out): a huge image whose
    working view is small then never exists as full-size floats (data/resolution.py, decode_reduction)."""
    with _opened(path, MAX_PIXELS if max_pixels is None else max_pixels) as img:
        arr = _to_float(_reduced(img, reduce))
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels in (2, 4):  # LA / RGBA: composite onto black so hidden colours never leak in
        arr = arr[..., :-1] * arr[..., -1:]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] != 3:
        raise ImageError(path, f"unsupported channel count {channels}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image_uint8(path: str | os.PathLike) -> np.ndarray:
    """`to_uint8(read_image(path))` without the full-size float image for 8-bit files (overlays of huge
    images): uint8 RGB (H, W, 3); transparency composited onto black as read_image does."""
    with _opened(path, MAX_PIXELS) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA"):  # premultiplied alpha = composite onto black
            return np.ascontiguousarray(np.asarray(img.convert("RGBA").convert("RGBa"))[..., :3])
        if img.mode == "RGB":
            return np.array(img)  # one copy, not convert's second one
        if img.mode in ("1", "L", "CMYK", "YCbCr"):
            return np.asarray(img.convert("RGB"))
    return to_uint8(read_image(path))  # 16- and 32-bit modes: through floats


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(path, f"not a readable image ({exc})") from None
    return h, w


MASK_ENCODINGS = ("binary", "nonzero")


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None, encoding: str = "binary") -> np.ndarray:
    """Read a binary defect mask (0 = normal, anything at full scale = defect) as bool (H, W).

    Accepted encodings are {0, 255}, {0, 1} and {0, 65535}. Soft or multi-level masks are refused
    rather than guessed at: binarise them yourself at the threshold you mean. `encoding="nonzero"`
    reads every nonzero pixel as defect, for datasets whose masks are documented that way (VisA's
    carry values other than 0/255; its reference preparation sets every nonzero pixel to 255).
    """
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding must be one of {MASK_ENCODINGS}, got {encoding!r}")
    with _opened(path, MAX_PIXELS) as img:
        if img.mode in ("RGB", "RGBA", "P", "LA"):
            if encoding == "nonzero":  # any colour channel set counts (luminance could round it to 0)
                arr = np.asarray(img.convert("RGB")).max(axis=2)
            else:
                arr = np.asarray(img.convert("L"))
        else:
            arr = np.asarray(img)
    if arr.ndim != 2:
        raise ImageError(path, f"mask must be single-channel, got shape {arr.shape}")
    values = np.unique(arr)
    top = values.max(initial=0)
    if encoding == "binary" and not (set(values.tolist()) <= {0, top} and top in (0, 1, 255, 65535, True)):
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise ImageError(path, f"mask has values other than 0/255 ({shown}); binarise it first")
    if shape is not None and arr.shape != tuple(shape):
        raise ImageError(path, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return arr > 0


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse, before any work is done, an output folder that cannot be created or written into."""
    path = Path(path)
    for part in (path, *path.parents):  # the nearest part that exists decides
        if part.exists():
            if not part.is_dir():
                raise OutputError(f"cannot create output folder {path}: {part} is a file, not a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise OutputError(f"cannot create output folder {path}: no permission to write in {part}")
            break
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """mkdir -p, with an error that names the folder and the reason instead of a bare errno."""
    path = check_output_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # what os.access cannot foresee: a read-only mount, ACLs, a full disk
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    return path


@contextmanager
def discarded_on_failure(folder: str | os.PathLike, created: bool,
                         worth_keeping: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """If the block raises, remove `folder` when this command created it and nothing in it is
    worth keeping (finished samples are: a rerun resumes from them), so bad input leaves no
    half-made output. Ctrl-C is not an error here: what was done stays, to be resumed."""
    try:
        yield
    except Exception:
        if created and not worth_keeping():
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    umask = os.umask(0)  # mkstemp makes 0600 files; give outputs the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write float [0, 1] (H, W[, 3]) or uint8/bool arrays as PNG, atomically."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
