import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qarad.data.demo import AREA_RANGE, DEFECT_TYPES, MARGIN, DemoConfig, _render_defect, make_demo_dataset
from qarad.data.io import read_mask
from qarad.data.mvtec import scan_mvtec

TINY = DemoConfig(categories=("gravel",), size=64, n_train=3, n_test_good=2, n_test_defect=3, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    calls = []
    make_demo_dataset(root, TINY, on_image=lambda: calls.append(1))
    return root, len(calls)


def test_layout_is_mvtec_and_scannable(tiny):
    root, n_calls = tiny
    assert n_calls == 3 + 2 + 3
    train = scan_mvtec(root, "gravel", "train")
    test = scan_mvtec(root, "gravel", "test")
    assert len(train) == 3 and all(s.label == 0 for s in train)
    assert sorted(s.defect_type for s in test) == sorted(["good", "good", *DEFECT_TYPES])
    for sample in train + test:
        with Image.open(sample.image) as img:
            assert img.mode == "RGB" and img.size == (64, 64)
        if sample.label:
            assert read_mask(sample.mask, (64, 64)).any()
    assert json.loads((root / "demo.json").read_text())["size"] == 64


def test_deterministic_bit_identical(tiny, tmp_path):
    root, _ = tiny
    make_demo_dataset(tmp_path / "again", TINY)
    assert _files(root) == _files(tmp_path / "again")
    other = make_demo_dataset(tmp_path / "other_seed", DemoConfig(**{**TINY.__dict__, "seed": 8}))
    assert _files(root)["gravel/train/good/000.png"] != _files(other)["gravel/train/good/000.png"]


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_only_mask_pixels_change(tiny, kind):
    root, _ = tiny
    sample = _render_defect(TINY, "gravel", kind, 0)
    changed = (sample.image != sample.clean).any(axis=2)
    assert sample.mask.any()
    assert not changed[~sample.mask].any()           # nothing outside the mask moved
    assert changed[sample.mask].mean() > 0.5          # and the mask is mostly real change
    written = np.asarray(Image.open(root / "gravel" / "test" / kind / "000.png"))
    assert np.array_equal(written, sample.image)
    assert np.array_equal(read_mask(root / "gravel" / "ground_truth" / kind / "000_mask.png"), sample.mask)


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_size_and_placement_at_default_size(kind):
    config = DemoConfig(categories=("brick",))
    for index in range(4):
        mask = _render_defect(config, "brick", kind, index).mask
        assert AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1]
        rows, cols = np.nonzero(mask)
        assert rows.min() >= MARGIN and cols.min() >= MARGIN
        assert rows.max() < 256 - MARGIN and cols.max() < 256 - MARGIN


def test_idempotent_and_resumable(tmp_path):
    root = make_demo_dataset(tmp_path / "d", TINY)
    before = _files(root)
    calls = []
    make_demo_dataset(root, TINY, on_image=lambda: calls.append(1))
    assert calls == []
    (root / "gravel" / "test" / "cut" / "000.png").unlink()
    make_demo_dataset(root, TINY, on_image=lambda: calls.append(1))
    assert calls == [1] and _files(root) == before


def test_refuses_a_different_config_or_foreign_folder(tiny, tmp_path):
    root, _ = tiny
    with pytest.raises(ValueError, match="different config"):
        make_demo_dataset(root, DemoConfig(**{**TINY.__dict__, "n_train": 4}))
    (tmp_path / "gravel").mkdir()
    with pytest.raises(ValueError, match="no demo.json"):
        make_demo_dataset(tmp_path, TINY)
    with pytest.raises(ValueError, match="unknown demo categories"):
        make_demo_dataset(tmp_path / "x", DemoConfig(categories=("marble",)))
