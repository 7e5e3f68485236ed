import numpy as np
import pytest
from scipy import ndimage

from qarad.defects.masks import FAMILY_MASK_KIND, propose_mask
from qarad.defects.renderer import CHANGE_THRESHOLD, FAMILIES, DefectParams, Rendered, render, sample_params
from qarad.defects.vocab import LUMA


def material(seed: int = 0, size: int = 72, level: float = 0.5, spread: float = 0.08) -> np.ndarray:
    """A smooth, slightly coloured texture, float32 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    grain /= grain.std()
    tint = np.array([1.0, 0.95, 0.85], np.float32)
    return np.clip((level + spread * grain)[..., None] * tint, 0, 1).astype(np.float32)


def region_for(family: str, size: int = 72, seed: int = 0) -> np.ndarray:
    return propose_mask(np.random.default_rng(seed), (size, size), np.ones((size, size), bool),
                        kind=FAMILY_MASK_KIND[family], scale=2.0)


def check(image: np.ndarray, region: np.ndarray, out: Rendered) -> None:
    assert out.image.dtype == np.float32 and out.image.shape == image.shape
    assert out.mask.dtype == bool and out.mask.shape == image.shape[:2]
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert out.mask.any(), "nothing was drawn"
    assert not (out.mask & ~region).any(), "defect leaked outside the region"
    changed = np.abs(out.image - image).max(axis=2) > CHANGE_THRESHOLD
    np.testing.assert_array_equal(changed, out.mask)
    assert np.array_equal(out.image[~out.mask], image[~out.mask]), "pixels outside the mask must be bit-identical"
    assert out.prompt and isinstance(out.params, DefectParams)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders_inside_its_region(family):
    image, region = material(), region_for(family)
    for seed in range(3):
        params = sample_params(np.random.default_rng(seed), family)
        out = render(image, region, params, np.random.default_rng(seed))
        check(image, region, out)
        assert out.params.family == family
        assert None not in (out.params.amplitude, out.params.extent, out.params.angle)


@pytest.mark.parametrize("family", FAMILIES)
def test_render_is_deterministic(family):
    image, region = material(1), region_for(family, seed=1)
    params = sample_params(np.random.default_rng(5), family)
    a = render(image, region, params, np.random.default_rng(9))
    b = render(image, region, params, np.random.default_rng(9))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.params == b.params and a.prompt == b.prompt
    c = render(image, region, params, np.random.default_rng(10))
    assert not np.array_equal(a.image, c.image)


def test_families_differ_from_each_other():
    image = material(2)
    region = np.zeros(image.shape[:2], bool)
    region[16:56, 16:56] = True
    renders = {f: render(image, region, sample_params(np.random.default_rng(0), f), np.random.default_rng(0))
               for f in FAMILIES}
    for i, f in enumerate(FAMILIES):
        for g in FAMILIES[i + 1:]:
            assert not np.array_equal(renders[f].image, renders[g].image), (f, g)


@pytest.mark.parametrize("level", [0.08, 0.5, 0.93])
@pytest.mark.parametrize("family", FAMILIES)
def test_visible_on_dark_mid_and_bright_material(family, level):
    image = material(3, level=level, spread=0.01)
    region = region_for(family, seed=3)
    out = render(image, region, sample_params(np.random.default_rng(4), family), np.random.default_rng(4))
    check(image, region, out)
    biggest = np.abs(out.image - image).max()
    assert biggest > 0.05, f"{family} on level {level} changes at most {biggest:.3f}"


@pytest.mark.parametrize("family", ["scratch", "crack", "print_line", "stain"])
def test_polarity_is_honoured_on_mid_grey(family):
    image = material(4, level=0.5, spread=0.02)
    region = region_for(family, seed=4)
    for polarity, sign in (("dark", -1), ("bright", 1)):
        params = sample_params(np.random.default_rng(1), family)
        params = DefectParams.from_dict({**params.to_dict(), "polarity": polarity, "colour": None})
        out = render(image, region, params, np.random.default_rng(1))
        delta = ((out.image - image) @ LUMA)[out.mask].mean()
        assert out.params.polarity == polarity and np.sign(delta) == sign


def test_polarity_adapts_when_the_material_has_no_room():
    image = np.full((64, 64, 3), 0.02, np.float32)
    region = region_for("scratch", 64)
    params = sample_params(np.random.default_rng(0), "scratch")
    params = DefectParams.from_dict({**params.to_dict(), "polarity": "dark", "contrast": "strong"})
    out = render(image, region, params, np.random.default_rng(0))
    assert out.params.polarity == "bright" and "dark" not in out.prompt
    delta = ((out.image - image) @ LUMA)[out.mask]  # the groove's shadow side may darken a little
    assert delta.mean() > 0.05 and delta.max() > 0.15


def test_contrast_scales_with_local_std():
    region = region_for("hole", 72, seed=2)
    strength = {}
    for contrast in ("faint", "strong"):
        params = DefectParams("hole", "large", "round", "none", "dark", contrast)
        image = material(5, spread=0.05)
        out = render(image, region, params, np.random.default_rng(0))
        strength[contrast] = np.abs(out.image - image)[out.mask].max()
    assert strength["strong"] > 1.5 * strength["faint"]


def test_labels_only_params_render():
    params = DefectParams(family="crack", size="large", shape="branching", orientation="vertical",
                          polarity="dark", contrast="strong")
    image, region = material(6), region_for("crack", seed=6)
    out = render(image, region, params, np.random.default_rng(0))
    check(image, region, out)
    assert 60 <= out.params.angle <= 120


def test_params_validation_and_round_trip():
    params = sample_params(np.random.default_rng(0))
    assert DefectParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="family"):
        DefectParams("smudge", "small", "thin", "none", "dark", "faint")
    with pytest.raises(ValueError, match="colour"):
        DefectParams("stain", "small", "round", "none", "dark", "faint", colour="plaid")
    with pytest.raises(ValueError, match="unknown DefectParams fields"):
        DefectParams.from_dict({**params.to_dict(), "glitter": 1})
    with pytest.raises(ValueError, match="unknown defect family"):
        sample_params(np.random.default_rng(0), "smudge")


def test_sample_params_covers_the_vocabulary():
    rng = np.random.default_rng(0)
    seen = [sample_params(rng) for _ in range(300)]
    assert {p.family for p in seen} == set(FAMILIES)
    assert all(p.polarity == "dark" for p in seen if p.family == "crack")
    assert all(p.colour is None for p in seen if p.family not in ("stain", "discoloration"))
    assert {p.contrast for p in seen} == {"faint", "strong"} and {p.size for p in seen} == {"small", "medium", "large"}


def test_render_rejects_bad_inputs():
    image = material()
    params = sample_params(np.random.default_rng(0), "hole")
    with pytest.raises(ValueError, match="region is empty"):
        render(image, np.zeros(image.shape[:2], bool), params, np.random.default_rng(0))
    with pytest.raises(ValueError, match="region is"):
        render(image, np.ones((5, 5), bool), params, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        render(image[..., 0], np.ones(image.shape[:2], bool), params, np.random.default_rng(0))


def test_tiny_region_still_renders():
    image = material(7)
    region = np.zeros(image.shape[:2], bool)
    region[30:33, 40:43] = True
    for family in FAMILIES:
        out = render(image, region, sample_params(np.random.default_rng(1), family), np.random.default_rng(1))
        assert not (out.mask & ~region).any()
        assert np.array_equal(out.image[~out.mask], image[~out.mask])


def _core(out: Rendered, depth: int = 2) -> np.ndarray:
    """The changed pixels at least `depth` px inside the change: away from the outline."""
    return ndimage.binary_erosion(out.mask, iterations=depth)


def _high_pass(image: np.ndarray) -> np.ndarray:
    luma = image @ LUMA
    return luma - ndimage.gaussian_filter(luma, 3.0)


@pytest.mark.parametrize("family", ["hole", "break"])
def test_holes_and_breaks_are_not_flat_fills(family):
    image = material(8, spread=0.08)
    region = np.zeros(image.shape[:2], bool)
    region[8:64, 8:64] = True
    params = DefectParams.from_dict({**sample_params(np.random.default_rng(2), family).to_dict(),
                                     "size": "large", "extent": 0.9})
    out = render(image, region, params, np.random.default_rng(2))
    core = _core(out)
    assert core.sum() > 30
    grain = _high_pass(image)[core].std()
    assert _high_pass(out.image)[core].std() > 0.2 * grain, "the floor should carry texture"


def test_stains_keep_the_material_grain():
    image = material(9, spread=0.08)
    region = np.zeros(image.shape[:2], bool)
    region[8:64, 8:64] = True
    for seed in range(3):
        params = DefectParams("stain", "large", "round", "none", "dark", "strong", opacity=0.95)
        out = render(image, region, params, np.random.default_rng(seed))
        core = _core(out, 3)
        corr = np.corrcoef(_high_pass(out.image)[core], _high_pass(image)[core])[0, 1]
        assert corr > 0.6, f"seed {seed}: the stain hides the texture under it (corr {corr:.2f})"


def test_scratch_is_lit_from_one_side():
    """A groove lit from above (LIGHT_FROM): its lower wall faces the light and brightens, next to
    a dark stroke; flat material alone could only darken."""
    image = np.full((64, 64, 3), 0.5, np.float32)
    region = np.zeros((64, 64), bool)
    region[20:44, 4:60] = True
    for seed in range(3):
        params = DefectParams("scratch", "large", "wide", "horizontal", "dark", "strong", angle=0.0, count=1,
                              width=3.0)
        out = render(image, region, params, np.random.default_rng(seed))
        delta = (out.image - image) @ LUMA
        rows = np.mgrid[0:64, 0:64][0]
        lit, dark = delta > 2 / 255, delta < -0.05
        assert lit.any() and dark.any()
        assert rows[lit].mean() > rows[dark].mean(), "the lit flank should be below the groove"


def test_stroke_width_varies_along_its_length():
    image = np.full((72, 72, 3), 0.5, np.float32)
    region = np.zeros((72, 72), bool)
    region[28:44, 2:70] = True
    params = DefectParams("crack", "large", "thin", "horizontal", "dark", "strong", angle=0.0, count=0, width=2.5)
    out = render(image, region, params, np.random.default_rng(3))
    widths = out.mask[:, 16:56].sum(axis=0)  # changed pixels per column, away from the tapered ends
    assert widths.min() < widths.max()
