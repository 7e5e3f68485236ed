import os
import re
import stat

import numpy as np
import pytest
from PIL import Image, ImageFile

import qarad.data.io as qio
from qarad.data.io import (ImageError, OutputError, atomic_path, check_output_folder, image_size, make_folder,
                           read_image, read_mask, write_image, write_text)


def save(path, array, mode=None, **kw):
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)


# ---- read_image: every mode comes back as float32 RGB in [0, 1] -----------------------------


def test_read_rgb_png(tmp_path, rgb):
    out = read_image(save(tmp_path / "a.png", rgb))
    assert out.shape == (6, 5, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255)


def test_read_grayscale_png_is_replicated_to_three_channels(tmp_path):
    gray = np.array([[0, 51, 255], [128, 7, 200]], dtype=np.uint8)
    out = read_image(save(tmp_path / "g.png", gray))
    assert out.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray / np.float32(255))


def test_read_rgba_composites_alpha_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0]],
                     [[255, 255, 255, 128], [10, 20, 30, 51]]], dtype=np.uint8)
    out = read_image(save(tmp_path / "a.png", rgba))
    expected = rgba[..., :3] / 255.0 * (rgba[..., 3:] / 255.0)  # hidden colour under alpha 0 never leaks
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_read_la_composites_alpha_on_black(tmp_path):
    la = Image.fromarray(np.array([[[255, 255], [255, 0]]], dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), [[[1, 1, 1], [0, 0, 0]]], atol=1e-6)


def test_read_palette_png(tmp_path, rgb):
    pal = Image.fromarray(rgb).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P"
        expected = np.asarray(img.convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)


def test_read_palette_with_transparency_composites_on_black(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pt.png", transparency=0)  # palette entry 0 (red) fully transparent
    np.testing.assert_allclose(read_image(tmp_path / "pt.png"), [[[0, 0, 0], [0, 1, 0]]], atol=1e-6)


def test_read_16_bit_png(tmp_path):
    values = np.array([[0, 1, 32768], [65535, 1000, 50000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as img:
        assert img.mode.startswith("I")  # 16-bit: "I;16" (or "I" in older Pillow)
    out = read_image(tmp_path / "d.png")
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], values / 65535.0, rtol=0, atol=1e-7)
    assert out.max() == 1.0 and out[0, 2, 1] == pytest.approx(32768 / 65535, abs=1e-7)  # not clipped at 255


def test_read_bilevel_and_float_images(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], [[1.0, 0.0]])
    Image.fromarray(np.array([[0.25, 1.0, 0.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 2], [[0.25, 1.0, 0.0]])
    # other ranges, and values outside every range: tests/test_hostile_io.py


def test_read_jpeg(tmp_path):
    flat = np.zeros((16, 16, 3), dtype=np.uint8)
    flat[...] = (200, 40, 90)
    out = read_image(save(tmp_path / "x.jpg", flat, quality=95))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1)), np.array([200, 40, 90]) / 255, atol=4 / 255)


def test_image_size_reads_header_as_height_width(tmp_path, rgb):
    assert image_size(save(tmp_path / "a.png", rgb)) == (6, 5)


# ---- read_image: errors name the file -------------------------------------------------------


def assert_names(exc_info, path, words):
    assert str(path) in str(exc_info.value)
    assert exc_info.value.path == str(path)
    assert words in str(exc_info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "nope.png")
    assert_names(e, tmp_path / "nope.png", "not found")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "empty.png")
    assert_names(e, tmp_path / "empty.png", "0 bytes")


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "notes.png")
    assert_names(e, tmp_path / "notes.png", "not a readable image")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path, suffix):
    rng = np.random.default_rng(1)
    full = save(tmp_path / f"full{suffix}", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageError) as e:
        read_image(cut)
    assert_names(e, cut, "truncated or corrupt")


def test_image_over_max_pixels_is_refused_before_decoding(tmp_path, rgb, monkeypatch):
    path = save(tmp_path / "big.png", rgb)  # 6 x 5 = 30 px
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    monkeypatch.setattr(qio, "MAX_PIXELS", 29)
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert_names(e, path, "5x6 = 30 px, over the limit of 29 px")
    assert decoded == []  # refused from the header alone
    monkeypatch.setattr(qio, "MAX_PIXELS", 30)
    assert read_image(path).shape == (6, 5, 3)
    assert decoded  # the spy does see real decoding
    with pytest.raises(ImageError, match="over the limit of 10 px"):
        read_image(path, max_pixels=10)


# ---- read_mask --------------------------------------------------------------------------------

MASK = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)


@pytest.mark.parametrize("scale", [255, 1])
def test_read_mask_binary_encodings(tmp_path, scale):
    path = save(tmp_path / "m.png", MASK.astype(np.uint8) * scale)
    out = read_mask(path, shape=(2, 3))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, MASK)


def test_read_mask_16_bit_and_rgb_and_bilevel(tmp_path):
    Image.fromarray(MASK.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), MASK)
    save(tmp_path / "rgb.png", np.repeat(MASK[..., None], 3, axis=2).astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), MASK)
    Image.fromarray(MASK).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "one.png"), MASK)


def test_read_mask_all_zero_is_an_empty_mask(tmp_path):
    out = read_mask(save(tmp_path / "z.png", np.zeros((4, 5), np.uint8)), shape=(4, 5))
    assert out.shape == (4, 5) and not out.any()


@pytest.mark.parametrize("values", [[0, 128, 255], [0, 128], [0, 1, 255], [0, 254]])
def test_read_mask_refuses_soft_masks(tmp_path, values):
    path = save(tmp_path / "soft.png", np.array([values], dtype=np.uint8))
    with pytest.raises(ImageError) as e:
        read_mask(path)
    assert_names(e, path, "binarise")
    assert str(values[1]) in str(e.value)  # the offending values are shown


def test_read_mask_refuses_shape_mismatch(tmp_path):
    path = save(tmp_path / "m.png", MASK.astype(np.uint8) * 255)  # 3 wide, 2 high
    with pytest.raises(ImageError) as e:
        read_mask(path, shape=(3, 2))
    assert_names(e, path, "mask is 3x2 but its image is 2x3")


# ---- atomic writes ----------------------------------------------------------------------------


def test_write_image_round_trip(tmp_path):
    img = np.linspace(0, 1, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    write_image(tmp_path / "sub" / "o.png", img)
    np.testing.assert_allclose(read_image(tmp_path / "sub" / "o.png"), img, atol=0.5 / 255 + 1e-6)
    write_image(tmp_path / "mask.png", MASK)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), MASK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.png"]


def test_write_image_failure_leaves_no_file(tmp_path):
    write_text(tmp_path / "keep.png", "old")
    with pytest.raises((TypeError, ValueError)):
        write_image(tmp_path / "keep.png", np.zeros((2, 2, 5), dtype=np.uint8))  # 5 channels: PIL refuses
    with pytest.raises((TypeError, ValueError)):
        write_image(tmp_path / "new.png", np.zeros((2, 2, 5), dtype=np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # no temp file, no partial new.png
    assert (tmp_path / "keep.png").read_text() == "old"  # the old file is untouched


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o644
    assert stat.S_IMODE((tmp_path / "report.txt").stat().st_mode) == plain


# ---- output folders ---------------------------------------------------------------------------


def pretend_root_obeys_mode_bits(monkeypatch):
    """Root may write into a 0500 folder; make os.access answer as for an ordinary user."""
    if os.geteuid() == 0:
        monkeypatch.setattr(qio.os, "access", lambda p, mode: not (mode & os.W_OK) or bool(os.stat(p).st_mode & 0o200))


def test_an_output_folder_below_a_file_is_refused_by_name(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for target in (tmp_path / "file.txt" / "run", tmp_path / "file.txt" / "a" / "b", tmp_path / "file.txt"):
        with pytest.raises(OutputError) as e:
            make_folder(target)
        assert str(e.value) == f"cannot create output folder {target}: {tmp_path / 'file.txt'} is a file, not a folder"
    with pytest.raises(OutputError, match="file.txt is a file, not a folder"):
        write_text(tmp_path / "file.txt" / "metrics.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_an_unwritable_output_folder_is_refused_by_name(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    pretend_root_obeys_mode_bits(monkeypatch)
    try:
        with pytest.raises(OutputError, match=re.escape(f"cannot create output folder {locked / 'run' / 'sub'}: "
                                                        f"no permission to write in {locked}")):
            check_output_folder(locked / "run" / "sub")
        with pytest.raises(OutputError, match=re.escape(f"no permission to write in {locked}")):
            write_text(locked / "out.txt", "x")
        assert list(locked.iterdir()) == []
    finally:
        os.chmod(locked, 0o700)


def test_a_write_that_the_os_refuses_names_the_file(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(qio.tempfile, "mkstemp", refuse)  # e.g. ACLs or a read-only mount os.access missed
    with pytest.raises(OutputError, match=re.escape(f"cannot write {tmp_path / 'out.png'}: Permission denied")):
        write_image(tmp_path / "out.png", MASK)
