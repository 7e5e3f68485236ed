"""Issue 32, hostile inputs to image reading and output writing (items 7, 12 and 14).

Each test failed on the code before the fix: the warnings race of the read-ahead thread, EXIF
orientation ignored, float TIFFs clipped to white, NaN written into JSON, files and folders made
without the umask's permissions.
"""
import json
import math
import os
import stat
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

import qarad.data.io as qio
from qarad.data.io import ImageError, OutputError, image_size, read_image, read_mask, write_json, write_text
from qarad.data.resolution import ResolutionPolicy
from qarad.data.stream import iter_loaded

WAIT_S = 10  # a deadlock fails the test instead of hanging it


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def pixels(h=6, w=4):
    """An (h, w, 3) uint8 image whose every pixel differs, so any flip or turn shows."""
    values = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 3
    return values


# ---- item 7: decoding never touches the process-wide warnings filters -------------------------


def stalled_load(monkeypatch, decoding: threading.Event, release: threading.Event, seen: list):
    """Make PIL's load stop half-way, record the warnings filters there, and wait for `release`."""
    real = ImageFile.ImageFile.load

    def load(self):
        seen.append(list(warnings.filters))
        decoding.set()
        release.wait(WAIT_S)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_warning_in_the_main_thread_while_the_read_ahead_thread_decodes_is_not_an_error(tmp_path, monkeypatch):
    """The race of item 7, made deterministic: the read-ahead thread is held inside PIL's decoder
    while the main thread warns as torch's legacy ONNX export does. Before the fix the decoder's
    `simplefilter("error")` was in force for the whole process and that warning raised."""
    path = tmp_path / "big.png"
    Image.fromarray(pixels()).save(path)
    decoding, release, seen, loaded = threading.Event(), threading.Event(), [], []
    stalled_load(monkeypatch, decoding, release, seen)
    consumer = threading.Thread(target=lambda: loaded.extend(iter_loaded([path], ResolutionPolicy(size=32))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        consumer.start()
        try:
            assert decoding.wait(WAIT_S), "the read-ahead thread never started decoding"
            warnings.warn("You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        finally:
            release.set()
            consumer.join(WAIT_S)
    assert [str(w.message) for w in caught] == ["You are using the legacy TorchScript-based ONNX export"]
    assert len(loaded) == 1 and loaded[0].image.shape == (6, 4, 3)


def test_reading_images_and_masks_never_changes_the_warnings_filters(tmp_path, monkeypatch):
    Image.fromarray(pixels()).save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 4), 255, np.uint8)).save(tmp_path / "m.png")
    before = list(warnings.filters)
    decoding, release, seen = threading.Event(), threading.Event(), []
    release.set()
    stalled_load(monkeypatch, decoding, release, seen)
    read_image(tmp_path / "a.png")
    read_mask(tmp_path / "m.png")
    assert seen and all(filters == before for filters in seen)
    assert warnings.filters == before


def test_writing_never_changes_the_process_umask(tmp_path, monkeypatch):
    """os.umask(0) to read the umask leaves every other thread creating world-writable files for
    that moment; the umask is read without setting it."""
    if not any(line.startswith("Umask:") for line in open("/proc/self/status")):
        pytest.skip("this kernel does not report the umask in /proc")
    calls = []
    monkeypatch.setattr(qio.os, "umask", lambda mask: calls.append(mask) or 0o022)
    write_text(tmp_path / "a.txt", "x")
    qio.staging_folder(tmp_path, "out")
    assert calls == []


# ---- item 12: EXIF orientation, for images and masks alike ------------------------------------

# orientation tag -> the transpose that stores a picture so that this tag displays it upright
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def save_oriented(path, array, orientation, **kw):
    """Save `array` as a camera does: pixels stored turned, with the tag that turns them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).transpose(STORED_AS[orientation]).save(path, exif=exif.tobytes(), **kw)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])  # PIL's TIFF reader turns them itself
@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_is_applied_to_images_masks_and_sizes_alike(tmp_path, orientation, suffix):
    upright = pixels(6, 4)
    mask = np.zeros((6, 4), np.uint8)
    mask[0, :2] = 255  # top-left corner: wrong on every flip or turn
    kw = {"lossless": True} if suffix == ".webp" else {}
    image = read_image(save_oriented(tmp_path / f"a{suffix}", upright, orientation, **kw))
    np.testing.assert_array_equal(image, upright / np.float32(255))
    assert image_size(tmp_path / f"a{suffix}") == (6, 4)
    read = read_mask(save_oriented(tmp_path / f"a_mask{suffix}", mask, orientation, **kw), shape=image.shape[:2])
    np.testing.assert_array_equal(read, mask > 0)


def test_exif_orientation_of_a_jpeg(tmp_path):
    flat = np.zeros((16, 8, 3), np.uint8)
    flat[:8] = (200, 40, 90)  # top half coloured, bottom black
    image = read_image(save_oriented(tmp_path / "a.jpg", flat, 6, quality=95))
    assert image.shape == (16, 8, 3) and image_size(tmp_path / "a.jpg") == (16, 8)
    assert image[:6].mean() > 0.3 and image[10:].mean() < 0.05


def test_a_mask_that_only_fits_once_turned_is_matched(tmp_path):
    """A portrait photo (stored landscape + tag 6) with a portrait mask: their shapes agree."""
    image = read_image(save_oriented(tmp_path / "a.png", pixels(8, 4), 6))
    Image.fromarray(np.zeros((8, 4), np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", shape=image.shape[:2]).shape == (8, 4)


# ---- item 12: float images are scaled by the range they use, never clipped ------------------


def save_float(path, values):
    Image.fromarray(np.asarray(values, np.float32), mode="F").save(path)
    return path


@pytest.mark.parametrize("values, expected", [
    ([[0.0, 0.25, 1.0]], [[0.0, 0.25, 1.0]]),  # already [0, 1]
    ([[0.0, 127.5, 255.0]], [[0.0, 0.5, 1.0]]),  # 8-bit values stored as float: was all white but 0
    ([[0.0, 1.5, 51.0]], [[0.0, 1.5 / 255, 0.2]]),
    ([[0.0, 65535.0, 13107.0]], [[0.0, 1.0, 0.2]]),  # 16-bit values
])
def test_float_images_are_scaled_by_the_range_they_use(tmp_path, values, expected):
    image = read_image(save_float(tmp_path / "f.tif", values))
    np.testing.assert_allclose(image[..., 1], expected, rtol=1e-6)


@pytest.mark.parametrize("value, words", [
    (float("nan"), "not a number"), (float("inf"), "not a number"), (-float("inf"), "not a number"),
    (70000.0, "above 65535"), (-0.5, "negative"),
])
def test_float_images_outside_every_range_are_refused_by_name(tmp_path, value, words):
    path = save_float(tmp_path / "f.tif", [[0.0, value, 0.5]])
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert e.value.path == str(path) and words in str(e.value)


# ---- item 14: strict JSON -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_never_gets_nan_or_infinity(tmp_path, bad):
    path = tmp_path / "metrics.json"
    with pytest.raises(OutputError) as e:
        write_json(path, {"overall": {"image_auroc": 0.5, "pixel_aupro": [1.0, bad]}})
    assert str(path) in str(e.value) and "overall.pixel_aupro[1]" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_undefined_values_are_written_as_null_where_asked(tmp_path):
    result = {"threshold": float("inf"), "overall": {"image_auroc": float("nan"), "n": 3, "ok": True},
              "per_type": [{"aupro": float("-inf")}, 0.5], "name": "a"}
    write_json(tmp_path / "m.json", qio.finite_or_null(result))
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "threshold": None, "overall": {"image_auroc": None, "n": 3, "ok": True},
        "per_type": [{"aupro": None}, 0.5], "name": "a"}
    assert math.isnan(result["overall"]["image_auroc"])  # the caller's values are left alone


# ---- item 14: permissions of what qarad makes ------------------------------------------------


def test_a_staging_folder_gets_the_umask_permissions(tmp_path, umask_022):
    plain = tmp_path / "plain"
    plain.mkdir()
    stage = qio.staging_folder(tmp_path / "out_parent", "predictions")
    assert stage.is_dir() and stage.parent == tmp_path / "out_parent"
    assert stage.name.startswith(".predictions.") and "partial" in stage.name  # hidden, and says what it is
    assert stat.S_IMODE(stage.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o755
    assert qio.staging_folder(tmp_path / "out_parent", "predictions") != stage  # each call a fresh folder


def test_a_staging_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file"):
        qio.staging_folder(tmp_path / "file", "predictions")


def test_a_writer_that_replaces_its_file_still_gets_the_umask_permissions(tmp_path, umask_022):
    """safetensors writes its own file (0600) in place of the temporary one."""
    with qio.atomic_path(tmp_path / "w.bin") as tmp:
        os.unlink(tmp)
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o644
