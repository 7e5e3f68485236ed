"""The refiner (text-conditioned detail decoder) and its place in the ARAS pipeline."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_aras
from qarad.synthesis.aras import SamplerConfig, dilate
from qarad.synthesis.pipeline import ARAS
from qarad.synthesis.refiner import Refiner, RefinerConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = RefinerConfig(channels=(8, 16, 16))


def inputs(seed: int = 0, side: int = 32):
    g = torch.Generator().manual_seed(seed)
    cover = torch.zeros(2, side, side)
    cover[:, 8:20, 10:18] = 1.0
    text = torch.nn.functional.normalize(torch.randn(2, 384, generator=g), dim=1)
    return torch.rand(2, 3, side, side, generator=g), torch.rand(2, 3, side, side, generator=g), cover, text


def test_a_fresh_refiner_passes_the_decoded_window_through():
    decoded, source, cover, text = inputs()
    torch.manual_seed(0)
    assert torch.equal(Refiner(TINY)(decoded, source, cover, text), decoded)


def test_the_prompt_the_source_and_the_mask_all_reach_the_output():
    torch.manual_seed(0)
    refiner = Refiner(TINY)
    for p in refiner.parameters():  # a fitted refiner: no zero-initialised layer left
        torch.nn.init.normal_(p, std=0.1)
    decoded, source, cover, text = inputs()
    out = refiner(decoded, source, cover, text)
    assert not torch.allclose(out, decoded)
    assert not torch.allclose(refiner(decoded, source, cover, text.flip(0)), out)
    assert not torch.allclose(refiner(decoded, source.flip(-1), cover, text), out)
    assert not torch.allclose(refiner(decoded, source, 1 - cover, text), out)


def test_a_window_the_levels_cannot_halve_is_refused():
    decoded, source, cover, text = inputs(side=30)
    with pytest.raises(ValueError, match="divisible by 4"):
        Refiner(TINY)(decoded, source, cover, text)


def _sample(model: ARAS, config: SamplerConfig):
    image = np.random.default_rng(1).random((48, 40, 3), dtype=np.float32)
    mask = np.zeros((48, 40), bool)
    mask[10:20, 12:22] = True
    return image, mask, model.synthesize(image, mask, "a thin dark scratch", 7, config)


def test_the_refiner_changes_only_pixels_inside_the_dilated_mask(tmp_path):
    model = ARAS.load(make_tiny_aras(tmp_path / "model", window=32))
    assert model.refiner is not None
    config = SamplerConfig()
    image, mask, refined = _sample(model, config)
    _, _, plain = _sample(model, SamplerConfig(refine=False))
    outside = ~dilate(torch.from_numpy(mask), config.dilate_px).numpy()
    assert np.array_equal(refined.image[outside], image[outside])
    assert not np.allclose(refined.image, plain.image)  # same codes, refined pixels


def test_models_without_a_refiner_still_load(tmp_path):
    legacy = make_tiny_aras(tmp_path / "legacy", window=32, refiner=False)
    meta = json.loads((legacy / "aras.json").read_text())
    del meta["fit"]["refiner_steps"], meta["fit"]["refiner"]  # as written before the refiner existed
    (legacy / "aras.json").write_text(json.dumps(meta))
    model = ARAS.load(legacy)
    assert model.refiner is None
    _, _, out = _sample(model, SamplerConfig())
    assert out.mask.any()
