import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from qarad.defects.masks import (AREA_RANGE, FAMILY_MASK_KIND, MASK_KINDS, MIN_PIXELS, dilate, feather,
                                 foreground_mask, propose_mask)
from qarad.defects.vocab import FAMILIES

SIZE = 96


def disc(size: int = SIZE, radius: int = 30, centre=(50, 45)) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def noisy(image, seed=0, sigma=0.02):
    return np.clip(image + np.random.default_rng(seed).normal(0, sigma, image.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("make", [
    lambda rng: rng.normal(0.5, 0.1, (SIZE, SIZE, 3)),  # sensor-noise texture
    lambda rng: np.repeat(ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 4)[..., None], 3, 2) * 3 - 1,  # blotches
    lambda rng: np.repeat((np.indices((SIZE, SIZE)).sum(0) // 12 % 2)[..., None], 3, 2) * 0.6 + 0.2,  # checkerboard
    lambda rng: np.repeat((0.5 + 0.3 * np.sin(np.arange(SIZE) / 2.0))[None, :, None], SIZE, 0).repeat(3, 2),  # stripes
])
def test_textures_filling_the_frame_are_all_foreground(make):
    image = np.clip(make(np.random.default_rng(0)), 0, 1).astype(np.float32)
    assert foreground_mask(image).mean() > 0.97


def test_bright_disc_on_black():
    image = noisy(np.where(disc()[..., None], 0.8, 0.05))
    assert iou(foreground_mask(image), disc()) > 0.95


def test_dark_object_on_bright_background():
    image = noisy(np.where(disc()[..., None], 0.15, 0.9))
    assert iou(foreground_mask(image), disc()) > 0.95


def test_textured_object_with_dark_spots_is_filled():
    rng = np.random.default_rng(1)
    obj = np.clip(rng.normal(0.6, 0.1, (SIZE, SIZE, 3)), 0, 1)
    obj[45:52, 40:47] = 0.05  # a dark hole in the object must not become background
    image = np.where(disc()[..., None], obj, 0.05).astype(np.float32)
    assert iou(foreground_mask(image), disc()) > 0.95


def test_tiny_or_huge_objects_fall_back_to_everything():
    small = noisy(np.where(disc(radius=4)[..., None], 0.9, 0.1))
    assert foreground_mask(small).all()
    huge = noisy(np.where(disc(radius=80, centre=(48, 48))[..., None], 0.9, 0.1))
    assert foreground_mask(huge).all()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_proposals_inside_foreground_with_area_in_range(kind):
    fg = disc()
    areas = []
    for seed in range(12):
        mask = propose_mask(np.random.default_rng(seed), (SIZE, SIZE), fg, kind=kind)
        assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
        assert not (mask & ~fg).any()
        assert mask.sum() >= MIN_PIXELS
        areas.append(mask.mean())
    assert min(areas) >= 0.5 * AREA_RANGE[0]
    assert max(areas) <= 1.2 * AREA_RANGE[1]


def test_proposals_keep_a_margin_and_follow_the_angle():
    full = np.ones((SIZE, SIZE), bool)
    for seed in range(6):
        mask = propose_mask(np.random.default_rng(seed), (SIZE, SIZE), full, kind="line", angle=0.0)
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        ys, xs = np.nonzero(mask)
        assert np.ptp(xs) > np.ptp(ys)  # horizontal line is wider than tall


def test_scale_changes_area():
    full = np.ones((SIZE, SIZE), bool)
    small = np.mean([propose_mask(np.random.default_rng(s), (SIZE, SIZE), full, "ellipse", scale=0.3).sum() for s in range(10)])
    big = np.mean([propose_mask(np.random.default_rng(s), (SIZE, SIZE), full, "ellipse", scale=2.0).sum() for s in range(10)])
    assert big > 3 * small


def test_tiny_foreground_falls_back_to_it():
    fg = np.zeros((SIZE, SIZE), bool)
    fg[40:44, 50:53] = True  # 12 px: no proposal of the usual size fits
    mask = propose_mask(np.random.default_rng(0), (SIZE, SIZE), fg, kind="blob")
    assert mask.any() and not (mask & ~fg).any()


def test_propose_mask_errors():
    with pytest.raises(ValueError, match="foreground is empty"):
        propose_mask(np.random.default_rng(0), (8, 8), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="unknown mask kind"):
        propose_mask(np.random.default_rng(0), (8, 8), np.ones((8, 8), bool), kind="star")
    with pytest.raises(ValueError, match="foreground is"):
        propose_mask(np.random.default_rng(0), (8, 8), np.ones((9, 8), bool))


def test_family_mask_kinds_are_known():
    assert set(FAMILY_MASK_KIND) == set(FAMILIES)
    assert set(FAMILY_MASK_KIND.values()) <= set(MASK_KINDS)


@settings(max_examples=40)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(MASK_KINDS), st.integers(6, 40),
       st.floats(0.2, 3.0))
def test_proposals_always_inside_foreground(seed, kind, radius, scale):
    fg = disc(64, radius, (32, 30))
    mask = propose_mask(np.random.default_rng(seed), (64, 64), fg, kind=kind, scale=scale)
    assert mask.any() and not (mask & ~fg).any()


def test_dilate_and_feather():
    mask = np.zeros((32, 32), bool)
    mask[16, 16] = True
    grown = dilate(mask, 3)
    assert grown.sum() == sum(1 for y in range(32) for x in range(32) if (y - 16) ** 2 + (x - 16) ** 2 <= 9)
    assert np.array_equal(dilate(mask, 0), mask)
    alpha = feather(mask, 4)
    assert alpha.dtype == np.float32 and alpha[16, 16] == 1.0
    assert not (alpha > 0)[~dilate(mask, 4)].any()
    assert alpha[16, 18] > alpha[16, 19] > 0
    assert not feather(np.zeros((4, 4), bool), 3).any()
