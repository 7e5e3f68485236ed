from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from qarad.defects.baselines import perlin, perlin_texture, procedural
from qarad.defects.corpus import CorpusConfig, iter_corpus, make_sample
from qarad.defects.masks import AREA_RANGE
from qarad.defects.prompts import family_of
from qarad.defects.renderer import CHANGE_THRESHOLD, FAMILIES, is_monochrome
from qarad.defects.vocab import BASELINE_FAMILY


def material(seed: int, h: int = 80, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)), 2.0)
    return np.clip(0.45 + 0.1 * grain / grain.std(), 0, 1)[..., None].repeat(3, 2).astype(np.float32)


def object_on_black(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    fg = (yy - 48) ** 2 + (xx - 48) ** 2 < 30 ** 2
    return np.where(fg[..., None], material(3, size, size) + 0.3, 0.03).astype(np.float32), fg


def check_rendered(image, out, region=None):
    assert out.image.dtype == np.float32 and out.image.shape == image.shape
    assert out.mask.any()
    changed = np.abs(out.image - image).max(axis=2) > CHANGE_THRESHOLD
    np.testing.assert_array_equal(changed, out.mask)
    assert np.array_equal(out.image[~out.mask], image[~out.mask])
    if region is not None:
        assert not (out.mask & ~region).any()


def test_make_sample_is_well_formed():
    config = CorpusConfig(window=64)
    image = material(0)
    for seed in range(4):
        s = make_sample(image, np.random.default_rng(seed), config)
        assert s.clean.shape == s.defect.shape == (64, 64, 3) and s.mask.shape == (64, 64)
        y, x = s.origin
        assert 0 <= y <= 80 - 64 and 0 <= x <= 96 - 64
        assert np.array_equal(s.clean, image[y:y + 64, x:x + 64])
        assert s.mask.any()
        np.testing.assert_array_equal(np.abs(s.defect - s.clean).max(axis=2) > CHANGE_THRESHOLD, s.mask)
        assert np.array_equal(s.defect[~s.mask], s.clean[~s.mask])
        assert family_of(s.prompt) == s.params.family


def test_make_sample_pads_small_images():
    image = material(1, 40, 30)
    s = make_sample(image, np.random.default_rng(0), CorpusConfig(window=64), family="hole")
    assert s.clean.shape == (64, 64, 3) and s.origin == (0, 0)
    assert np.array_equal(s.clean[:40, :30], image)
    assert np.array_equal(s.clean[50, 20], image[-1, 20])  # edge replication
    assert s.params.family == "hole" and s.mask.any()


def test_make_sample_respects_the_object():
    image, fg = object_on_black()
    for seed in range(4):
        s = make_sample(image, np.random.default_rng(seed), CorpusConfig(window=96))
        assert not (s.mask & ~fg).any()


def test_monochrome_material_gets_no_hues():
    """A grey camera cannot see a green stain: on grey images the corpus and the procedural
    baseline draw colourless stains and discolorations (and prompts without hue words); on colour
    images hues still appear."""
    grey = material(5)
    tinted = grey * np.array([1.0, 0.9, 0.8], np.float32)
    config = CorpusConfig(window=64, families=("stain", "discoloration"))
    assert is_monochrome(grey) and not is_monochrome(tinted)
    on_grey = [s.params.colour for s in iter_corpus([grey], 24, config)]
    on_tint = [s.params.colour for s in iter_corpus([tinted], 24, config)]
    assert on_grey == [None] * 24
    assert sum(c is not None for c in on_tint) >= 6
    assert all(procedural(grey, np.random.default_rng(i), family="stain").params.colour is None for i in range(8))
    rgb = (grey * 255).astype(np.uint8)
    rgb[0, 0, 0] += 2  # one pixel off grey by more than 1/255
    assert not is_monochrome(rgb / 255.0)


def test_iter_corpus_is_deterministic_balanced_and_sliceable():
    images = [material(i, 64, 64) for i in range(2)]
    config = CorpusConfig(window=48, seed=7)
    a = list(iter_corpus(images, 18, config))
    b = list(iter_corpus(iter(images), 18, config))  # any iterable, consumed once
    assert len(a) == 18
    for s, t in zip(a, b):
        assert np.array_equal(s.defect, t.defect) and s.prompt == t.prompt and s.origin == t.origin
    assert Counter(s.params.family for s in a) == Counter({f: 2 for f in FAMILIES})
    for i, s in enumerate(a):
        assert np.array_equal(s.clean, images[i % 2][s.origin[0]:s.origin[0] + 48, s.origin[1]:s.origin[1] + 48])
    c = list(iter_corpus(images, 18, CorpusConfig(window=48, seed=8)))
    assert any(s.prompt != t.prompt for s, t in zip(a, c))


def test_corpus_config_validation():
    with pytest.raises(ValueError, match="unknown defect families"):
        CorpusConfig(families=("scratch", "smudge"))
    with pytest.raises(ValueError, match="window"):
        CorpusConfig(window=2)
    with pytest.raises(ValueError, match="at least one image"):
        list(iter_corpus([], 3))
    only = list(iter_corpus([material(0, 32, 32)], 4, CorpusConfig(window=32, families=("dent",))))
    assert all(s.params.family == "dent" for s in only)


@pytest.mark.parametrize("family", [None, *FAMILIES])
def test_procedural_baseline(family):
    image, fg = object_on_black()
    out = procedural(image, np.random.default_rng(0), family)
    check_rendered(image, out, fg)
    if family is not None:
        assert out.params.family == family


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin(np.random.default_rng(0), (64, 80), (4, 5))
    assert noise.shape == (64, 80) and np.abs(noise).max() < 1.0
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2


def test_perlin_texture_baseline():
    image = material(5)
    rng = np.random.default_rng(0)
    out = perlin_texture(image, rng, textures=[np.random.default_rng(1).random((40, 40, 3))])
    check_rendered(image, out)
    assert out.prompt == "a foreign texture patch" and out.params.family == BASELINE_FAMILY
    assert 0.3 <= out.params.opacity <= 1.0
    assert out.mask.mean() <= AREA_RANGE[1] * 1.05
    again = perlin_texture(image, np.random.default_rng(0), textures=[np.random.default_rng(1).random((40, 40, 3))])
    assert np.array_equal(out.image, again.image)


def test_perlin_texture_stays_on_the_object_with_default_textures():
    image, fg = object_on_black()
    for seed in range(3):
        out = perlin_texture(image, np.random.default_rng(seed), textures=None, foreground=fg)
        check_rendered(image, out, fg)
        assert AREA_RANGE[0] * 0.5 <= out.mask.mean() <= AREA_RANGE[1] * 1.05


def test_perlin_texture_accepts_grey_uint8_textures():
    image = material(6, 48, 48)
    tex = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    out = perlin_texture(image, np.random.default_rng(2), textures=[tex])
    check_rendered(image, out)
