"""Attributes read back from the changed pixels, and the ones a prompt states."""
import numpy as np
import pytest

from qarad.defects.attributes import measure, size_threshold
from qarad.defects.prompts import prompt_for, stated_attributes
from qarad.defects.renderer import DefectParams, resolve_params


def _grey(seed=0, shape=(80, 80)):
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.03 * rng.standard_normal((*shape, 1)), 0, 1).repeat(3, axis=2).astype(np.float32)


def _disc(shape=(80, 80), r=20):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - 40) ** 2 + (xx - 40) ** 2 < r * r


@pytest.mark.parametrize("angle,orientation", [(0, "horizontal"), (90, "vertical"), (45, "diagonal"),
                                               (-45, "diagonal")])
def test_a_dark_bar_is_dark_elongated_and_oriented(angle, orientation):
    before, region = _grey(), _disc()
    yy, xx = np.mgrid[0:80, 0:80] - 40.0
    a = np.deg2rad(angle)
    along, across = xx * np.cos(a) - yy * np.sin(a), xx * np.sin(a) + yy * np.cos(a)  # y grows downwards
    bar = (np.abs(along) < 15) & (np.abs(across) < 2)
    after = before.copy()
    after[bar] -= 0.25
    m = measure(before, after, region)
    assert m.polarity == "dark" and m.shape == "elongated" and m.orientation == orientation


def test_a_bright_disc_is_bright_round_and_its_size_is_its_share():
    before, region = _grey(1), _disc(r=20)
    after = before.copy()
    small = _disc(r=10)
    after[small] += 0.2
    m = measure(before, after, region)
    assert m.polarity == "bright" and m.shape == "round" and m.orientation is None
    assert m.size == pytest.approx(small.sum() / region.sum(), rel=0.25)
    after[_disc(r=19)] = before[_disc(r=19)] + 0.2
    assert measure(before, after, region).size > 2 * m.size


def test_nothing_changed_has_no_polarity():
    before = _grey(2)
    assert measure(before, before.copy(), _disc()).polarity is None


def test_size_threshold_splits_small_from_large():
    assert size_threshold([0.1, 0.2, 0.5, 0.6], ["small", "small", "large", "large"]) == pytest.approx(0.35)


def test_stated_attributes_follow_the_words():
    p = resolve_params(DefectParams("hole", "large", "elongated", "vertical", "dark", "strong"),
                       np.random.default_rng(0))
    assert stated_attributes(p, "a large elongated dark hole running vertically") == {
        "polarity": "dark", "size": "large", "elongation": "elongated", "orientation": "vertical"}
    assert stated_attributes(p, "a hole") == {}
    # every stated attribute is one the params hold, over many drawn prompts
    from qarad.defects.renderer import sample_params

    rng = np.random.default_rng(1)
    for _ in range(200):
        q = sample_params(rng)
        for key, value in stated_attributes(q, prompt_for(q)).items():
            assert value == (q.shape if key == "elongation" else getattr(q, key))
