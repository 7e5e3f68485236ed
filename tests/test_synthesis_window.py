"""The window rule: masks span half the window, zooming in up to max_zoom; fit and synthesis agree."""
import numpy as np
import pytest

from qarad.synthesis.corpus import zoom_to_mask
from qarad.synthesis.model import FitConfig, config_dict, config_from_dict
from qarad.synthesis.window import LEGACY_MAX_ZOOM, WindowRule


def _mask(shape, y0, x0, y1, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_small_mask_is_zoomed_in_up_to_max_zoom():
    rule = WindowRule(64, max_zoom=4.0)
    y0, x0, y1, x1 = rule.box(_mask((256, 256), 100, 100, 106, 106), (1.0, 1.0))
    assert (y1 - y0, x1 - x0) == (16, 16)  # 64 / 4: a 6-px defect would want 12, the zoom stops at 4
    y0, x0, y1, x1 = rule.box(_mask((256, 256), 100, 100, 112, 112), (1.0, 1.0))
    assert (y1 - y0, x1 - x0) == (24, 24)  # 12-px mask spans half of a 24-px window (zoom 2.67)
    assert y0 <= 100 and y1 >= 112 and x0 <= 100 and x1 >= 112


def test_large_mask_is_zoomed_out_and_source_scale_is_respected():
    rule = WindowRule(64, max_zoom=4.0)
    y0, x0, y1, x1 = rule.box(_mask((256, 256), 50, 60, 130, 100), (1.0, 1.0))
    assert (y1 - y0, x1 - x0) == (160, 160)  # 80-px extent -> twice that
    # a 2x source image (working = half the source): the same working-px window, twice the source px
    y0, x0, y1, x1 = rule.box(_mask((512, 512), 200, 200, 224, 224), (0.5, 0.5))
    assert (y1 - y0, x1 - x0) == (48, 48)  # 12 working px -> 24 working px -> 48 source px


def test_box_stays_inside_the_image_and_limit_clips_its_size():
    rule = WindowRule(64, max_zoom=1.0)
    mask = _mask((40, 40), 0, 0, 4, 4)
    assert rule.box(mask, (1.0, 1.0))[:2] == (0, 0)
    assert rule.box(mask, (1.0, 1.0)) == (0, 0, 64, 64)  # larger than the image: runs past the bottom/right
    assert rule.box(mask, (1.0, 1.0), limit=True) == (0, 0, 40, 40)
    with pytest.raises(ValueError, match="empty"):
        rule.box(np.zeros((8, 8), bool), (1.0, 1.0))


def test_max_zoom_below_one_is_refused():
    with pytest.raises(ValueError, match="max_zoom"):
        WindowRule(64, max_zoom=0.5)
    with pytest.raises(ValueError, match="max_zoom"):
        FitConfig(max_zoom=0.0)


def test_corpus_cut_shows_the_mask_at_the_size_synthesis_will():
    rng = np.random.default_rng(0)
    clean = rng.random((64, 64, 3), dtype=np.float32)
    defect = clean.copy()
    mask = _mask((64, 64), 20, 30, 28, 38)  # 8 px: zoom 4 -> 16-px crop, mask 32 px in the window
    defect[mask] = 0.0
    c, d, m = zoom_to_mask(clean, defect, mask, WindowRule(64, max_zoom=4.0))
    assert c.shape == d.shape == (64, 64, 3) and m.shape == (64, 64)
    ys, xs = np.nonzero(m)
    assert ys.max() - ys.min() + 1 == 32 and xs.max() - xs.min() + 1 == 32
    assert d[20:44, 20:44].max() < 0.05  # the defect, zoomed (its edge pixels blend with the material)
    assert np.abs(c - d)[~m].mean() < np.abs(c - d)[m].mean() / 5
    empty = np.zeros((64, 64), bool)
    assert zoom_to_mask(clean, defect, empty, WindowRule(64))[0] is clean  # nothing to centre on


def test_models_fitted_before_the_rule_keep_their_view():
    values = config_dict(FitConfig())
    del values["max_zoom"]
    assert config_from_dict(values, "aras.json").max_zoom == LEGACY_MAX_ZOOM
    assert config_from_dict(config_dict(FitConfig()), "aras.json").window_rule == WindowRule(64, 4.0)


def test_a_prior_vocabulary_that_is_not_the_codebook_is_refused():
    from qarad.synthesis.prior import PriorConfig
    from qarad.synthesis.tokenizer import TokenizerConfig

    with pytest.raises(ValueError, match="codebook size"):
        FitConfig(tokenizer=TokenizerConfig(codebook_size=128), prior=PriorConfig(vocab_size=512))
