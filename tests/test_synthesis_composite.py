"""The grain composite: low frequencies from the decode, fine detail from real material."""
import numpy as np
import pytest
import torch

from qarad.synthesis.composite import GRAIN, Grain, donor_crop, fine_energy, gaussian_blur, grain_composite

SIGMA = 1.5


def _grainy(seed: int, shape=(48, 48), std=0.08) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + std * torch.randn(1, *shape, generator=g)).expand(3, -1, -1).clamp(0, 1).contiguous()


def _disc(shape=(48, 48), r=12) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < r * r


def _inner(mask: torch.Tensor, px: int = 4) -> torch.Tensor:
    """The mask's core, away from the soft edge of the gains."""
    return -torch.nn.functional.max_pool2d(-mask.float()[None, None], 2 * px + 1, 1, px)[0, 0] > 0


def test_blur_keeps_a_constant_and_removes_fine_detail():
    flat = torch.full((3, 20, 30), 0.4)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    noisy = _grainy(0)
    assert fine_energy(gaussian_blur(noisy, 2.0), SIGMA) < 0.3 * fine_energy(noisy, SIGMA)


def test_a_decode_of_the_source_itself_gives_back_the_source():
    src = _grainy(1)
    out = grain_composite(src, src, src, _disc(), GRAIN["stain"], SIGMA)
    outside = ~torch.nn.functional.max_pool2d(_disc().float()[None, None], 13, 1, 6)[0, 0].bool()
    assert torch.allclose(out[:, outside], src[:, outside], atol=1e-5)


def test_a_smooth_decode_gets_the_sources_grain_scaled_by_the_family():
    src, mask = _grainy(2), _disc()
    old = gaussian_blur(src, 3.0)  # the decoder's grainless imitation of the material
    decoded = old.clone()
    decoded[:, mask] -= 0.2  # a grainless dark blob, as an 8x8-token decode draws it
    core = _inner(mask)
    grain_in = lambda out: float((out - gaussian_blur(out, SIGMA))[:, core].std())  # noqa: E731
    real = grain_in(src)
    whole = grain_in(grain_composite(decoded, old, src, mask, Grain(1.0), SIGMA))
    dulled = grain_in(grain_composite(decoded, old, src, mask, GRAIN["stain"], SIGMA))
    assert grain_in(decoded) < 0.3 * real  # what `replace` pastes
    assert whole == pytest.approx(real, rel=0.1)
    assert dulled == pytest.approx(GRAIN["stain"].gain * real, rel=0.15)
    # the decode's structure (its low frequencies) is kept: the blob is still darker
    out = grain_composite(decoded, old, src, mask, GRAIN["stain"], SIGMA)
    assert float(out[:, core].mean()) < float(src[:, core].mean()) - 0.15


def test_a_scratch_keeps_the_decodes_fine_stroke():
    src, mask = _grainy(3, std=0.02), torch.zeros(48, 48, dtype=torch.bool)
    mask[22:27, 6:42] = True
    old = gaussian_blur(src, 3.0)
    decoded = old.clone()
    decoded[:, 24, 8:40] = 0.1  # a one-pixel dark stroke: fine detail the new codes drew
    out = grain_composite(decoded, old, src, mask, GRAIN["scratch"], SIGMA)
    assert float(out[:, 24, 10:38].mean()) < float(src[:, 24, 10:38].mean()) - 0.2


def test_removing_families_take_the_grain_from_the_donor():
    src, donor, mask = _grainy(4), _grainy(5), _disc()
    decoded = gaussian_blur(src, 3.0)
    out = grain_composite(decoded, decoded, src, mask, GRAIN["hole"], SIGMA, donor)
    core = _inner(mask)
    fine = lambda x: (x - gaussian_blur(x, SIGMA))[0, core]  # noqa: E731
    with_donor = np.corrcoef(fine(out).numpy(), fine(donor).numpy())[0, 1]
    with_source = np.corrcoef(fine(out).numpy(), fine(src).numpy())[0, 1]
    assert with_donor > 0.8 and abs(with_source) < 0.2


def test_donor_is_material_like_and_off_the_defect():
    rng = np.random.default_rng(0)
    image = np.full((160, 200, 3), 0.05, np.float32)  # a plain dark backdrop ...
    image[10:150, 40:190] = 0.4 + 0.08 * rng.standard_normal((140, 150, 1))  # ... and a grainy part
    image[60:100, 100] = 0.95  # a bright edge on the part: structure a donor must not carry
    box = (40, 70, 72, 102)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    src = torch.from_numpy(image[40:72, 70:102]).permute(2, 0, 1)
    patch = (slice(None), slice(2, 30), slice(2, 30))  # the mask's box grown by the blur's reach
    for seed in range(5):
        donor = donor_crop(image, box, mask, SIGMA, torch.Generator().manual_seed(seed))
        assert donor.shape == (3, 32, 32)
        assert float(donor[patch].max()) < 0.9  # no edge
        assert fine_energy(donor[patch], SIGMA) > 0.5 * fine_energy(src[patch], SIGMA)  # grain, not the backdrop
        assert not torch.equal(donor[patch], src[patch])
        assert torch.equal(donor[:, 30:], src[:, 30:])  # outside the patch: the source as it is


def test_grain_synthesis_keeps_outside_pixels_and_restores_grain(tmp_path):
    from conftest import make_tiny_aras

    from qarad.synthesis.aras import SamplerConfig, dilate
    from qarad.synthesis.pipeline import ARAS

    model = ARAS.load(make_tiny_aras(tmp_path / "model", window=32, refiner=False))
    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.1 * rng.standard_normal((40, 56, 1)), 0, 1).repeat(3, axis=2).astype(np.float32)
    mask = np.zeros((40, 56), bool)
    mask[12:28, 18:38] = True
    outs = {c: model.synthesize(image, mask, "a large dark stain", 1, SamplerConfig(composite=c))
            for c in ("replace", "grain")}
    outside = ~dilate(torch.from_numpy(mask), SamplerConfig().dilate_px).numpy()
    for out in outs.values():
        assert np.array_equal(out.image[outside], image[outside])
    fine = lambda x: fine_energy(torch.from_numpy(x[14:26, 20:36]).permute(2, 0, 1), 1.0)  # noqa: E731
    assert fine(outs["grain"].image) > 1.5 * fine(outs["replace"].image)
