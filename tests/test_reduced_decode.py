"""Reduced decoding of large images (scoring keeps no original) and strip-wise overlays (predict)."""
import numpy as np
import pytest
import torch
from PIL import Image

from qarad.data.io import read_image, read_image_uint8, to_uint8, write_image
from qarad.data.resolution import ResolutionPolicy
from qarad.data.stream import load
from qarad.detection import overlay as overlay_module
from qarad.detection.inference import score_images
from qarad.detection.overlay import write_overlay
from qarad.detection.patchcore import PatchCore, PatchCoreConfig
from qarad.report.figures import overlay


def _smooth_texture(rng, h, w, channels=3):
    """A material-like image: random values at 1/8 resolution, upsampled (a camera's blur)."""
    coarse = rng.integers(0, 256, (h // 8, w // 8, channels), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    return np.asarray(Image.fromarray(coarse.squeeze(), mode).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.fromarray(_smooth_texture(np.random.default_rng(0), 760, 616)).save(path)  # 64 px: reduced 2x
    return path


def test_reduction_is_a_quarter_of_the_shrink_and_none_below_8x():
    assert ResolutionPolicy("resize", 64).layout(640, 512).decode_reduction == 2  # shrink 8
    assert ResolutionPolicy("resize", 64).layout(640, 448).decode_reduction == 1  # shrink 7
    assert ResolutionPolicy("resize", 256).layout(10000, 10000).decode_reduction == 9
    assert ResolutionPolicy("keep-aspect", 64).layout(100, 900).decode_reduction == 1
    assert ResolutionPolicy("tile", 64, scale=0.125, overlap=16).layout(800, 800).decode_reduction == 2


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "I;16"])
def test_reduce_averages_blocks_in_every_mode(tmp_path, mode):
    rng = np.random.default_rng(1)
    grey = _smooth_texture(rng, 64, 48, channels=1)
    img = Image.fromarray(grey, "L")
    if mode == "RGB":
        img = img.convert("RGB")
    elif mode == "P":
        img = img.convert("P")
    elif mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)  # 16 bit, same values scaled
    img.save(tmp_path / "x.png")
    full = read_image(tmp_path / "x.png")
    reduced = read_image(tmp_path / "x.png", reduce=4)
    assert reduced.shape == (16, 12, 3) and reduced.dtype == np.float32
    blocks = full.reshape(16, 4, 12, 4, 3).mean((1, 3))
    assert np.abs(reduced - blocks).max() < 1.5 / 255  # PIL rounds each block's mean to its bit depth


def test_reduced_views_match_the_full_decode(big_image):
    policy = ResolutionPolicy("resize", 64)
    kept, reduced = load(0, big_image, policy, keep_image=True), load(0, big_image, policy, keep_image=False)
    assert reduced.image is None and kept.image is not None
    assert reduced.layout == kept.layout and reduced.layout.source_hw == (760, 616)
    assert kept.layout.decode_reduction == 2  # and neither side a multiple of it: the last block is partial
    diff = (kept.views - reduced.views).abs()
    assert diff.max() < 0.02 and diff.mean() < 0.003


def test_scores_of_the_reduced_path_match_the_full_decode(big_image, tmp_path):
    rng = np.random.default_rng(2)
    train = []
    for i in range(3):
        train.append(tmp_path / f"n{i}.png")
        Image.fromarray(_smooth_texture(rng, 760, 616)).save(train[-1])
    model = PatchCore(PatchCoreConfig(coreset_ratio=0.5, blur_sigma=1.0, calibration_images=0),
                      ResolutionPolicy("resize", 64)).fit(train)
    full = next(score_images(model, [big_image], keep_images=True))
    reduced = next(score_images(model, [big_image]))
    assert full.image is not None and reduced.image is None
    assert abs(reduced.score - full.score) < 0.02 * full.score
    assert np.abs(reduced.anomaly_map - full.anomaly_map).mean() < 0.01 * np.abs(full.anomaly_map).mean()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("threshold", [0.7, float("inf")])
def test_strip_overlay_equals_the_whole_image_overlay(tmp_path, monkeypatch, mode, threshold):
    monkeypatch.setattr(overlay_module, "STRIP_ROWS", 37)  # several strips, the last one short
    rng = np.random.default_rng(3)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (150, 110, channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert np.abs(read_image_uint8(tmp_path / "x.png").astype(int) - to_uint8(image)).max() <= 1
    layout = ResolutionPolicy("resize", 64).layout(150, 110)
    work = rng.normal(size=(64, 64)).astype(np.float32)
    write_image(tmp_path / "whole.png", overlay(image, layout.to_source(torch.from_numpy(work)).numpy(), threshold))
    write_overlay(tmp_path / "strips.png", tmp_path / "x.png", layout, work, threshold)
    whole = np.asarray(Image.open(tmp_path / "whole.png")).astype(int)
    strips = np.asarray(Image.open(tmp_path / "strips.png")).astype(int)
    assert strips.shape == whole.shape == (150, 110, 3)
    assert np.abs(strips - whole).max() <= 1  # float rounding of the separable resize, at most 1 level
