import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qarad.data.resolution import STRIDE_MULTIPLE, Layout, ResolutionPolicy


def image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# ---- policies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "crop"}, "unknown resolution policy 'crop'"),
    ({"size": 0}, "multiple of 32"),
    ({"size": 31}, "multiple of 32"),
    ({"size": 48}, "multiple of 32"),
    ({"size": -32}, "multiple of 32"),
    ({"scale": 0.0}, "scale must be in"),
    ({"scale": 8.5}, "scale must be in"),
    ({"mode": "tile", "size": 64, "overlap": 64}, "overlap must be in"),
    ({"mode": "tile", "overlap": -1}, "overlap must be in"),
])
def test_policy_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ResolutionPolicy(**kwargs)


def test_policy_round_trips_through_dict():
    p = ResolutionPolicy("tile", 96, 0.5, 10)
    assert p.to_dict() == {"mode": "tile", "size": 96, "scale": 0.5, "overlap": 10}
    assert ResolutionPolicy(**p.to_dict()) == p
    ResolutionPolicy("resize", 64, overlap=500)  # overlap only matters for tiling


# ---- resize and keep-aspect -----------------------------------------------------------------------


def test_resize_layout():
    lay = ResolutionPolicy("resize", 64).layout(48, 80)
    assert (lay.source_hw, lay.work_hw, lay.view_hw, lay.origins) == ((48, 80), (64, 64), (64, 64), ((0, 0),))
    views = lay.views(image(48, 80))
    assert views.shape == (1, 3, 64, 64) and views.dtype == torch.float32
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert lay.valid().all()
    m = torch.rand(1, 64, 64)
    assert torch.equal(lay.stitch(m), m[0])
    assert lay.to_source(m[0]).shape == (48, 80)


@pytest.mark.parametrize("hw, size, work, view", [
    ((48, 64), 64, (64, 85), (64, 96)),   # 64 * 64/48 = 85.33 -> 85, padded to 96
    ((100, 40), 32, (80, 32), (96, 32)),  # portrait: 100 * 32/40 = 80 -> padded to 96
    ((64, 64), 64, (64, 64), (64, 64)),   # already fitting: nothing to do
    ((30, 200), 64, (64, 427), (64, 448)),
])
def test_keep_aspect_layout(hw, size, work, view):
    lay = ResolutionPolicy("keep-aspect", size).layout(*hw)
    assert (lay.work_hw, lay.view_hw, lay.origins) == (work, view, ((0, 0),))
    assert lay.view_hw[0] % STRIDE_MULTIPLE == 0 and lay.view_hw[1] % STRIDE_MULTIPLE == 0
    assert min(lay.work_hw) == size


def test_keep_aspect_views_pad_by_replicating_and_valid_marks_real_pixels():
    lay = ResolutionPolicy("keep-aspect", 64).layout(48, 64)  # work (64, 85), view (64, 96)
    img = image(48, 64)
    work = lay.to_work(img)
    assert work.shape == (3, 64, 85)
    (view,) = lay.views(img)
    assert torch.equal(view[:, :, :85], work)
    assert torch.equal(view[:, :, 85:], work[:, :, 84:85].expand(3, 64, 11))  # border replicated
    valid = lay.valid()
    assert valid.shape == (1, 64, 96)
    assert valid[0, :, :85].all() and not valid[0, :, 85:].any()
    maps = torch.rand(1, 64, 96)
    assert torch.equal(lay.stitch(maps), maps[0, :, :85])  # padding removed
    assert lay.to_source(lay.stitch(maps)).shape == (48, 64)


def test_to_work_is_identity_at_working_size():
    lay = ResolutionPolicy("tile", 32, 1.0, 8).layout(40, 50)
    img = image(40, 50)
    assert torch.equal(lay.to_work(img), torch.from_numpy(img).permute(2, 0, 1))


def test_mask_to_work_stays_binary():
    rng = np.random.default_rng(0)
    mask = rng.random((48, 64)) < 0.2
    for policy in (ResolutionPolicy("keep-aspect", 64), ResolutionPolicy("resize", 96),
                   ResolutionPolicy("tile", 32, 0.7, 8)):
        lay = policy.layout(48, 64)
        out = lay.mask_to_work(mask)
        assert out.dtype == bool and out.shape == lay.work_hw
        assert 0 < out.sum() < out.size
    # an exact 2x nearest upscale repeats every pixel 2x2
    small = rng.random((32, 32)) < 0.5
    up = ResolutionPolicy("resize", 64).layout(32, 32).mask_to_work(small)
    np.testing.assert_array_equal(up, small.repeat(2, axis=0).repeat(2, axis=1))
    same = ResolutionPolicy("tile", 32, 1.0, 8).layout(48, 64).mask_to_work(mask)
    np.testing.assert_array_equal(same, mask)


# ---- tiling -----------------------------------------------------------------------------------


def check_tiling(lay: Layout, size: int, overlap: int):
    """Origins cover the working image, tiles fit the canvas, and neighbours overlap enough."""
    h, w = lay.work_hw
    assert lay.view_hw == (size, size) and size % STRIDE_MULTIPLE == 0
    assert lay.canvas_hw == (max(h, size), max(w, size))
    ys = sorted({y for y, _ in lay.origins})
    xs = sorted({x for _, x in lay.origins})
    assert lay.origins == tuple((y, x) for y in ys for x in xs)  # row-major grid
    for starts, length in ((ys, h), (xs, w)):
        assert starts[0] == 0
        assert starts[-1] + size == max(length, size)  # flush with the end (or padded)
        gaps = np.diff(starts)
        assert np.all(gaps > 0)
        assert np.all(size - gaps >= overlap)  # overlap at least as requested
        # and no more tiles than needed: one fewer could not cover `length` with that overlap
        n = len(starts)
        assert n == 1 or (n - 1) * (size - overlap) + overlap < length
    covered = np.zeros(lay.canvas_hw, dtype=int)
    for y, x in lay.origins:
        covered[y:y + size, x:x + size] += 1
    assert covered[:h, :w].min() >= 1


@pytest.mark.parametrize("hw, size, scale, overlap, work, n", [
    ((100, 150), 64, 1.0, 16, (100, 150), 2 * 3),
    ((200, 90), 64, 1.0, 31, (200, 90), 6 * 2),  # ceil(169 / 33) = 6 rows, ceil(59 / 33) = 2 cols
    ((100, 60), 32, 0.5, 8, (50, 30), 2 * 1),
    ((20, 30), 32, 1.0, 8, (20, 30), 1),  # smaller than a tile: one padded tile
    ((64, 65), 64, 1.0, 0, (64, 65), 2),
    ((33, 47), 32, 2.0, 20, (66, 94), 4 * 7),
])
def test_tile_layout(hw, size, scale, overlap, work, n):
    lay = ResolutionPolicy("tile", size, scale, overlap).layout(*hw)
    assert lay.source_hw == hw and lay.work_hw == work and len(lay.origins) == n and lay.overlap == overlap
    check_tiling(lay, size, overlap)


@given(st.integers(1, 400), st.integers(1, 400), st.sampled_from([32, 64, 96]), st.integers(0, 95),
       st.sampled_from([0.25, 0.5, 1.0, 1.5]))
def test_tile_layout_property(h, w, size, overlap, scale):
    overlap = overlap % size
    lay = ResolutionPolicy("tile", size, scale, overlap).layout(h, w)
    assert lay.work_hw == (max(1, round(h * scale)), max(1, round(w * scale)))
    check_tiling(lay, size, overlap)


def test_small_image_tile_is_padded_and_valid_marks_it():
    lay = ResolutionPolicy("tile", 32, 1.0, 8).layout(20, 30)
    img = image(20, 30)
    (view,) = lay.views(img)
    assert view.shape == (3, 32, 32)
    assert torch.equal(view[:, :20, :30], torch.from_numpy(img).permute(2, 0, 1))
    assert torch.equal(view[:, 20:, :30], view[:, 19:20, :30].expand(3, 12, 30))
    valid = lay.valid()[0]
    assert valid[:20, :30].all() and valid.sum() == 20 * 30


def test_tile_views_are_crops_of_the_working_image_and_valid_masks_padding():
    lay = ResolutionPolicy("tile", 64, 1.0, 16).layout(40, 100)  # rows padded 40 -> 64; cols 0, 36
    assert lay.origins == ((0, 0), (0, 36))
    img = image(40, 100)
    work = torch.from_numpy(img).permute(2, 0, 1)
    views = lay.views(img)
    assert views.shape == (2, 3, 64, 64)
    for v, (y, x) in zip(views, lay.origins):
        assert torch.equal(v[:, :40], work[:, :, x:x + 64])
    valid = lay.valid()
    assert valid.shape == (2, 64, 64)
    assert valid[:, :40].all() and not valid[:, 40:].any()


# ---- stitching ----------------------------------------------------------------------------------


def ramp(n, overlap):
    """The documented blend weight w(i) = min(1, (i + 1) / (overlap + 1), (n - i) / (overlap + 1))."""
    return [min(1.0, (i + 1) / (overlap + 1), (n - i) / (overlap + 1)) for i in range(n)]


def expected_stitch(lay, maps):
    """Per working pixel: sum over covering views of w(dy) w(dx) m / sum of w(dy) w(dx), in float64."""
    h, w = lay.work_hw
    vh, vw = lay.view_hw
    ry, rx = ramp(vh, lay.overlap), ramp(vw, lay.overlap)
    maps = maps.double().numpy()
    out = np.zeros((h, w))
    for py in range(h):
        for px in range(w):
            num = den = 0.0
            for m, (y, x) in zip(maps, lay.origins):
                if y <= py < y + vh and x <= px < x + vw:
                    wt = ry[py - y] * rx[px - x]
                    num += wt * m[py - y, px - x]
                    den += wt
            out[py, px] = num / den
    return out


def synthetic_maps(lay):
    """View i sees the smooth field f(y, x) of the working image plus its own offset i % 3."""
    vh, vw = lay.view_hw
    maps = []
    for i, (y, x) in enumerate(lay.origins):
        gy, gx = np.mgrid[y:y + vh, x:x + vw]
        maps.append(np.sin(gy / 7.0) + np.cos(gx / 5.0) + i % 3)
    return torch.tensor(np.stack(maps), dtype=torch.float32)


def coverage(lay):
    count = np.zeros(lay.canvas_hw, dtype=int)
    for y, x in lay.origins:
        count[y:y + lay.view_hw[0], x:x + lay.view_hw[1]] += 1
    return count[: lay.work_hw[0], : lay.work_hw[1]]


@pytest.mark.parametrize("hw, size, overlap", [((70, 100), 32, 10), ((40, 90), 32, 0), ((50, 50), 32, 31)])
def test_stitch_is_the_documented_ramp_weighted_mean(hw, size, overlap):
    lay = ResolutionPolicy("tile", size, 1.0, overlap).layout(*hw)
    maps = synthetic_maps(lay)
    out = lay.stitch(maps)
    assert out.shape == hw and out.dtype == torch.float32
    expected = expected_stitch(lay, maps)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)  # float32 sums of many tiles
    # single-view pixels keep that view's value; overlapped ones blend the offsets
    single = coverage(lay) == 1
    direct = np.full(hw, np.nan)
    for m, (y, x) in reversed(list(zip(maps.numpy(), lay.origins))):
        direct[y:y + size, x:x + size] = m[: hw[0] - y, : hw[1] - x]
    np.testing.assert_allclose(out.numpy()[single], direct[single], rtol=0, atol=2e-6)
    if overlap:
        assert np.abs(expected - direct)[~single].max() > 0.1  # the blend is really tested


def test_stitch_blend_at_one_pixel_by_hand():
    # 40 wide, tiles of 32 with overlap 8: x origins 0 and 8 (ceil(32/24) = 2 tiles, step 8).
    # At column 20: tile 0 has i = 20, tile 1 has i = 12; both in their plateau (w = 1): mean 1.5.
    # At column 31: tile 0 i = 31 -> w = (32 - 31)/9 = 1/9; tile 1 i = 23 -> w = 1:
    #   (1 * 1/9 + 2 * 1) / (1/9 + 1) = (19/9) / (10/9) = 1.9
    # At column 8: tile 0 i = 8 -> w = 1; tile 1 i = 0 -> w = 1/9: (1 + 2/9) / (10/9) = 1.1
    lay = ResolutionPolicy("tile", 32, 1.0, 8).layout(32, 40)
    assert lay.origins == ((0, 0), (0, 8))
    maps = torch.stack([torch.full((32, 32), 1.0), torch.full((32, 32), 2.0)])
    out = lay.stitch(maps)
    assert out[16, 20].item() == pytest.approx(1.5, abs=1e-6)
    assert out[16, 31].item() == pytest.approx(1.9, abs=1e-6)
    assert out[16, 8].item() == pytest.approx(1.1, abs=1e-6)
    assert torch.all(out[:, :8] == 1.0) and torch.all(out[:, 32:] == 2.0)


def test_stitch_is_exact_where_only_one_view_covers():
    lay = ResolutionPolicy("tile", 64, 1.0, 16).layout(100, 150)
    maps = torch.rand(len(lay.origins), 64, 64, generator=torch.Generator().manual_seed(0))
    out = lay.stitch(maps)
    single = torch.from_numpy(coverage(lay) == 1)
    direct = torch.full((100, 150), float("nan"))
    for m, (y, x) in zip(maps, lay.origins):
        direct[y:y + 64, x:x + 64] = m[: 100 - y, : 150 - x]
    assert torch.equal(out[single], direct[single])
