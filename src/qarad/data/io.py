"""Image and mask reading with explicit, file-naming errors, and atomic writes.

Every image is returned as float32 RGB in [0, 1] (H, W, 3), whatever its mode on disk:
grayscale, palette, RGBA/LA (alpha composited onto black), 16-bit and 32-bit integer, float;
images and masks alike are turned upright by their EXIF orientation, as a viewer shows them.

Reading runs in the read-ahead thread (data/stream.py), so it changes no process-wide state:
no warnings filters (they are shared by every thread: an "error" filter set here once turned the
main thread's ONNX-export warnings into crashes, issue 32) and no umask.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import struct
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Refuse before decoding: 100 Mpx of float32 RGB is already 1.2 GB.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # we do our own, clearer check against MAX_PIXELS
# Float images hold intensities on one of these scales, told apart by their largest value.
FLOAT_SCALES = (1.0, 255.0, 65535.0)
# EXIF orientations that swap width and height (transpose, rotate 90 / 270, transverse).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ERRORS = (SyntaxError, ValueError, OSError, struct.error, KeyError, TypeError)  # what a bad EXIF block raises


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
    """The decoded image, turned upright by its EXIF orientation.

    Truncated and corrupt pixel data raise in PIL (ImageFile.LOAD_TRUNCATED_IMAGES is left False);
    what PIL only warns about is metadata it skipped (a short EXIF tag, a malformed MPO or APNG
    extension), never the pixels, so its warnings are left to the process's own filters."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise ImageError(path, f"cannot open ({exc.strerror or exc})") from None
    try:
        # From a file object, not a name: PIL memory-maps an uncompressed image opened by name, and
        # on that path leaves a TIFF's pixels unturned while reporting the turned size.
        with fp, Image.open(fp) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, f"image is {w}x{h} = {w * h} px, over the limit of {max_pixels} px "
                                       "(raise qarad.data.io.MAX_PIXELS if this is intended)")
            if w == 0 or h == 0:
                raise ImageError(path, f"image has zero size {w}x{h}")
            img.load()
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except EXIF_ERRORS as exc:
                raise ImageError(path, f"unreadable EXIF orientation ({exc})") from None
            yield img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Warning) as exc:  # Warning: where the process made them errors
        raise ImageError(path, f"cannot decode image ({exc}); the file may be truncated or corrupt") from None


def _float_scale(arr: np.ndarray, path: Path) -> float:
    """The scale of a float image's intensities: the smallest of FLOAT_SCALES that holds them all."""
    if not np.isfinite(arr).all():
        raise ImageError(path, "float image has pixels that are not a number (NaN or infinity)")
    low, high = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if low < 0:
        raise ImageError(path, f"float image has negative values (down to {low:g}); intensities must lie in "
                               f"[0, 1], [0, 255] or [0, 65535]")
    for scale in FLOAT_SCALES:
        if high <= scale:
            return scale
    raise ImageError(path, f"float image has values up to {high:g}, above 65535; intensities must lie in "
                           "[0, 1], [0, 255] or [0, 65535]")


def _to_float(img: Image.Image, path: Path) -> np.ndarray:
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
    if img.mode == "F":  # not clipped: 8-bit values stored as float would all be white
        return arr.astype(np.float32) / np.float32(_float_scale(arr, path))
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
        arr = _to_float(_reduced(img, reduce), Path(path))
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
    """(height, width) as read_image returns it (EXIF orientation applied), from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Image.getexif reads what the header holds; a PNG's own getexif would decode the whole
            # image to look for an eXIf chunk after the pixels (PIL writes it before them).
            # PIL's TIFF reader gives the upright size itself (and turns the pixels as it loads).
            tiff = img.format == "TIFF"
            orientation = 1 if tiff else Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(path, f"not a readable image ({exc})") from None
    except EXIF_ERRORS as exc:
        raise ImageError(path, f"unreadable EXIF orientation ({exc})") from None
    return (w, h) if orientation in SWAPPING_ORIENTATIONS else (h, w)


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


def current_umask() -> int:
    """The process umask, read without setting it: os.umask(0) and back would leave every other
    thread creating files without a umask for that moment."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # no /proc (or an old kernel): the briefest, most restrictive swap
    os.umask(umask)
    return umask


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
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and some writers (safetensors) replace the file with their own
        # 0600 one: give the finished output the usual permissions just before it appears.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_replaceable(path: str | os.PathLike) -> None:
    """`path` may be written by replacing it: absent, or a regular file (not a folder, not a link)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise OutputError(f"{path}: is {kind}, not a file qarad wrote; move it away (qarad replaces only its own "
                          f"output files)")


@contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """`atomic_path` for a set of outputs that belong together (metrics.json, scores.csv and
    report.html of one evaluation): every target is checked first, and all are renamed into place
    only if the whole block succeeds, so a failure leaves the earlier set as it was."""
    for path in paths:
        check_replaceable(path)
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(path)) for path in paths]


def staging_folder(parent: str | os.PathLike, name: str) -> Path:
    """A fresh hidden folder in `parent` (made if needed) to build the output `name` in, with the
    permissions of any folder made under the umask (tempfile.mkdtemp makes 0700 ones)."""
    parent = make_folder(parent)
    try:
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial-"))
    except OSError as exc:
        raise OutputError(f"cannot create a folder in {parent}: {exc.strerror or exc}") from None
    os.chmod(stage, 0o777 & ~current_umask())
    return stage


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


def write_csv(path: str | os.PathLike, records: list[dict]) -> None:
    """`records` (dicts with the same keys, the first one's order) as a CSV table with a header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text(path, buf.getvalue())


def _non_finite(obj: Any, where: str = "") -> str | None:
    """Where in `obj` the first NaN or infinity sits ("a.b[2]"), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((found for key, value in items if (found := _non_finite(value, key)) is not None), None)


def finite_or_null(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, scalars) with each NaN or infinity made None (JSON null):
    for values where "undefined" is an answer, as a metric on a split with one class only."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def json_text(obj: Any, path: str | os.PathLike) -> str:
    """Strict JSON (no NaN, no Infinity: other readers refuse them) for the file `path`."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        where = _non_finite(obj)
        if where is None:
            raise
        raise OutputError(f"{path}: refusing to write {where} = NaN or infinity, which JSON cannot hold") from None


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json_text(obj, path))
