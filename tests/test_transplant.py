"""Moving real defects onto other images (defects/transplant.py): the few-shot augmentation keeps the
defect inside its own mask shape, copy-paste changes pixels only inside the dilated pasted mask."""
import json

import numpy as np
import pytest
from PIL import Image

from qarad.defects.masks import dilate
from qarad.defects.transplant import PasteConfig, background, cut, mask_like, place, transform


def _shot(seed=0, shape=(60, 80)):
    rng = np.random.default_rng(seed)
    image = (0.4 + 0.1 * rng.random((*shape, 3))).astype(np.float32)
    mask = np.zeros(shape, bool)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    mask[((yy - 25) / 6) ** 2 + ((xx - 40) / 10) ** 2 <= 1] = True  # an ellipse
    image[mask] = 0.05
    return image, mask


def test_background_fills_the_defect_from_its_surroundings():
    image = np.full((40, 40, 3), 0.6, np.float32)
    mask = np.zeros((40, 40), bool)
    mask[15:25, 12:30] = True
    image[mask] = 0.0
    bg = background(image, mask)
    assert np.allclose(bg, 0.6, atol=1e-4)
    patch = cut(image, mask)
    assert np.allclose(patch.change[patch.mask], -0.6, atol=1e-4) and not patch.change[~patch.mask].any()
    assert np.allclose(patch.pixels, image[12:28, 9:33])  # margin 3 around the box


@pytest.mark.parametrize("seed", range(6))
def test_difference_mode_keeps_the_defect_inside_its_transformed_mask(seed):
    image, mask = _shot()
    target = (0.7 + 0.1 * np.random.default_rng(99).random((70, 90, 3))).astype(np.float32)
    rng = np.random.default_rng(seed)
    moved = transform(cut(image, mask), rng)
    ratio = moved.mask.sum() / mask.sum()
    assert 0.8 ** 2 * 0.8 < ratio < 1.25 ** 2 * 1.2  # the size changes by the scale range (area: squared)
    placed = place(target, moved, rng, "difference")
    assert placed.changed.any()
    assert not (placed.changed & ~placed.mask).any(), "a pixel outside the defect's own mask changed"
    assert np.array_equal(placed.image[~placed.mask], target[~placed.mask])
    assert placed.mask.sum() == moved.mask.sum()
    assert (placed.image[placed.mask].mean() < target[placed.mask].mean() - 0.25)  # still a dark defect


@pytest.mark.parametrize("seed", range(4))
def test_alpha_mode_changes_pixels_only_inside_the_dilated_mask(seed):
    image, mask = _shot(seed)
    target = np.full((50, 50, 3), 0.8, np.float32)
    rng = np.random.default_rng(seed)
    cfg = PasteConfig(feather_px=2.0)
    placed = place(target, transform(cut(image, mask), rng, cfg, (0.6, 0.6)), rng, "alpha", config=cfg)
    assert placed.changed.any()
    assert not (placed.changed & ~dilate(placed.mask, cfg.feather_px)).any()


def test_the_same_generator_gives_the_same_paste():
    image, mask = _shot()
    target = np.full((64, 64, 3), 0.5, np.float32)
    a, b = (place(target, transform(cut(image, mask), np.random.default_rng(5)), np.random.default_rng(6))
            for _ in range(2))
    assert np.array_equal(a.image, b.image) and a.origin == b.origin


def test_mask_like_keeps_the_template_shape_on_the_foreground():
    _, template = _shot()
    fg = np.zeros((120, 160), bool)
    fg[:, 80:] = True
    for seed in range(5):
        m = mask_like(np.random.default_rng(seed), template, (120, 160), fg)
        ratio = m.sum() / (template.sum() * 4)  # the target is twice as large a side
        assert 0.8 ** 2 * 0.8 < ratio < 1.25 ** 2 * 1.2
        ys, xs = np.nonzero(m)
        assert fg[int(ys.mean()), int(xs.mean())]


def test_copy_paste_writes_a_synth_folder_that_changes_only_the_dilated_masks(tmp_path):
    from qarad import api
    from qarad.data.real_defects import select_real_defects
    from qarad.synthesis.jobs import MANIFEST, read_manifest
    from qarad.testing import make_defect_folder, texture

    real = select_real_defects([make_defect_folder(tmp_path / "pit", n=3, size=(40, 40))], shots=2)
    normals = tmp_path / "good"
    normals.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(64, 64), (80, 48)]):
        Image.fromarray(texture(rng, size)).save(normals / f"{i}.png")
    done = api.copy_paste(real, [normals], tmp_path / "paste", n=4, seed=1)
    assert done.made == 4 and (tmp_path / "paste" / "gallery.html").is_file()
    entries = read_manifest(tmp_path / "paste" / MANIFEST)
    assert [e["real_type"] for e in entries] == ["pit"] * 4 and {e["prompt"] for e in entries} == {"pit"}
    assert [e["shot"] for e in entries] == [real.defects[i % 2].image for i in range(4)]
    settings = json.loads((tmp_path / "paste" / "synth.json").read_text())
    assert settings["method"] == "copy_paste" and settings["real_defects"] == real.to_dict()
    for e in entries:
        src = np.asarray(Image.open(e["source"]).convert("RGB"))
        new = np.asarray(Image.open(tmp_path / "paste" / e["image"]))
        changed = np.asarray(Image.open(tmp_path / "paste" / e["mask"])) > 0
        assert changed.any() and np.array_equal(new[~changed], src[~changed])
    again = api.copy_paste(real, [normals], tmp_path / "paste", n=4, seed=1)
    assert again.made == 0  # resumed: nothing left to do
