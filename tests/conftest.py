"""Shared test helpers: a tiny generated MVTec AD tree, and deterministic hypothesis settings."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# the fake data and models live in the library, so benchmarks can use them too; re-exported for the tests
from qarad.testing import DEFECT_TYPES, defect_box, make_mvtec_tree, make_tiny_aras, texture  # noqa: F401

# Same examples on every run, no example database written into the checkout, no flaky deadlines.
settings.register_profile("qarad", derandomize=True, database=None, deadline=None, max_examples=60)
settings.load_profile("qarad")


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """A default fake MVTec tree with category "widget"."""
    return make_mvtec_tree(tmp_path / "mvtec")


def assert_synthesizes_locally(model, shape: tuple[int, int], box: tuple[int, int, int, int], seed: int = 0):
    """`model.synthesize` on a random image with a rectangular mask (y0, x0, y1, x1): every pixel
    outside the dilated mask is bit-identical to the input. -> the SynthResult."""
    import numpy as np
    import torch

    from qarad.synthesis.aras import SamplerConfig, dilate

    image = np.random.default_rng(seed).random((*shape, 3), dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[box[0]:box[2], box[1]:box[3]] = True
    out = model.synthesize(image, mask, "a thin dark scratch", seed=seed)
    outside = ~dilate(torch.from_numpy(mask), SamplerConfig().dilate_px).numpy()
    assert np.array_equal(out.image[outside], image[outside])
    assert not (out.mask & outside).any()
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are dominated by per-op overhead; extra threads only add sync cost (and the
    CPUs may be shared). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
