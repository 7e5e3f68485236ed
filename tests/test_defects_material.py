import numpy as np
import pytest
from scipy import ndimage

from qarad.defects.material import (LIGHT_SIGMA, Material, borrowed_grain, measure, relief, retone, rough_edge,
                                    surface)
from qarad.defects.vocab import LUMA


def grey_texture(seed: int = 0, size: int = 64, level: float = 0.5, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    grain /= grain.std()
    return np.repeat(np.clip(level + spread * grain, 0, 1)[..., None], 3, axis=2).astype(np.float32)


def test_spread_ignores_a_few_pixels_of_another_object():
    image = grey_texture(spread=0.04)
    region = np.ones(image.shape[:2], bool)
    clean = measure(image, region, region.astype(np.float32))
    image[:, :5] = 1.0  # a bright background strip in the box: 8% of the pixels
    mixed = measure(image, region, region.astype(np.float32))
    assert clean.std == pytest.approx(0.04, rel=0.25)
    assert mixed.std < 1.3 * clean.std
    assert mixed.std < float((image @ LUMA).std()) / 2


def test_retone_at_the_material_colour_gives_the_material_back():
    image = grey_texture(1)
    region = np.zeros(image.shape[:2], bool)
    region[20:44, 20:44] = True
    mat, surf = measure(image, region, region.astype(np.float32)), surface(image, region)
    same = retone(mat.mean, mat, surf, texture=1.0)
    np.testing.assert_allclose(same[region], image[region], atol=1e-5)
    flat = retone(mat.mean, mat, surf, texture=0.0)
    assert (flat[region] @ LUMA).std() < 0.5 * (image[region] @ LUMA).std()  # the light only, no grain


def test_retone_follows_the_light_and_darkens_the_grain_with_the_paint():
    x = np.linspace(0.3, 0.6, 64, dtype=np.float32)
    image = np.repeat(np.tile(x, (64, 1))[..., None], 3, axis=2)  # lit from the right
    region = np.ones((64, 64), bool)
    mat, surf = measure(image, region, region.astype(np.float32)), surface(image, region)
    dark = retone(np.full(3, 0.2, np.float32), mat, surf, texture=1.0)
    assert dark[32, 50, 0] > dark[32, 14, 0]  # brighter where the material is brighter
    assert dark[32, 50, 0] < 0.4


def test_borrowed_grain_is_deterministic_and_stays_in_the_box():
    image = grey_texture(2, size=96)
    region = np.zeros((96, 96), bool)
    region[40:50, 40:50] = True
    surf = surface(image, region)
    a = borrowed_grain(image, surf, np.random.default_rng(0))
    b = borrowed_grain(image, surf, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    outside = np.ones((96, 96), bool)
    outside[surf.box] = False
    assert not a[outside].any() and a[surf.box].std() > 0.01
    assert surf.box[0].start == 40 - int(3 * LIGHT_SIGMA)


def test_relief_lights_the_slope_that_faces_the_light():
    x = np.arange(32, dtype=np.float64)
    ridge = np.tile(np.exp(-((x - 16) / 4) ** 2), (32, 1))  # a ridge running down the image
    shade = relief(ridge, np.array([0.0, -1.0]))  # light from the left
    assert shade[16, 12] > 0 > shade[16, 20]


def test_rough_edge_moves_the_outline_by_about_the_amount():
    edge = np.zeros((64, 64), np.float32)
    moved = rough_edge(edge, np.random.default_rng(0), 0.5)
    assert float((moved - edge).std()) == pytest.approx(0.5, rel=0.05)
    np.testing.assert_array_equal(moved, rough_edge(edge, np.random.default_rng(0), 0.5))


def test_material_is_a_plain_record():
    m = Material(np.full(3, 0.5, np.float32), 0.5, 0.1)
    assert m.luma == 0.5 and m.std == 0.1
