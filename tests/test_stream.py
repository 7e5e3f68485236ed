from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qarad.data.io import ImageError
from qarad.data.resolution import ResolutionPolicy
from qarad.data.stream import Loaded, iter_loaded, load, map_views


def loaded(index, hw, policy, seed=None):
    img = np.random.default_rng(index if seed is None else seed).random((*hw, 3), dtype=np.float32)
    layout = policy.layout(*hw)
    return Loaded(index, Path(f"img{index}.png"), img, layout, layout.views(img))


class Recorder:
    """A batch-independent view-wise function that remembers every batch it was given."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __call__(self, views):  # (b, 3, h, w) -> (b, h, w)
        self.batches.append(views.clone())
        return views[:, 0] * 2.0 - views[:, 1] + views[:, 2] ** 2


def check(items, batch_size):
    fn = Recorder()
    out = list(map_views(iter(items), fn, batch_size=batch_size))
    assert [item.index for item, _ in out] == [item.index for item in items]  # input order
    for (got_item, result), item in zip(out, items):
        assert got_item is item
        assert torch.equal(result, fn.__class__()(item.views))  # same as one image at a time
    for batch in fn.batches:
        assert 1 <= len(batch) <= batch_size
    # every view went through exactly once, in order
    flat = [v for b in fn.batches for v in b]
    expected = [v for item in items for v in item.views]
    assert len(flat) == len(expected) and all(torch.equal(a, b) for a, b in zip(flat, expected))
    return fn.batches


def test_tiles_split_across_batches():
    policy = ResolutionPolicy("tile", 32, 1.0, 8)
    # views per image: 40x50 -> 2x2 = 4, 32x100 -> 1x4 = 4, 20x20 -> 1, 60x32 -> 3x1 = 3
    items = [loaded(i, hw, policy) for i, hw in enumerate([(40, 50), (32, 100), (20, 20), (60, 32)])]
    assert [len(it.views) for it in items] == [4, 4, 1, 3]
    batches = check(items, batch_size=3)
    # views fill the open batch before a new one starts, so every batch but the last is full:
    # [0:3] [0:1 + 1:2] [1:2 + 2:1] [3:3]  (image:views) -> 12 views in 4 calls
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    assert torch.equal(batches[1][0], items[0].views[3]) and torch.equal(batches[2][2], items[2].views[0])


def test_views_of_one_image_share_a_batch_with_the_next_image():
    policy = ResolutionPolicy("tile", 32, 1.0, 8)
    items = [loaded(i, hw, policy) for i, hw in enumerate([(40, 50), (20, 20), (20, 20), (40, 50)])]
    batches = check(items, batch_size=6)
    # 4 + 1 + 1 = 6 views fill the first batch (three images in one batch); the last 4 follow
    assert [len(b) for b in batches] == [6, 4]


def test_keep_aspect_never_mixes_view_shapes_in_a_batch():
    policy = ResolutionPolicy("keep-aspect", 32)
    shapes = [(24, 32), (24, 32), (32, 24), (24, 32), (24, 32), (24, 32), (32, 32)]
    items = [loaded(i, hw, policy) for i, hw in enumerate(shapes)]
    assert {tuple(it.views.shape[-2:]) for it in items} == {(32, 64), (64, 32), (32, 32)}
    batches = check(items, batch_size=2)
    for b in batches:
        assert len({tuple(v.shape) for v in b}) == 1
    assert [tuple(b.shape) for b in batches] == [(2, 3, 32, 64), (1, 3, 64, 32), (2, 3, 32, 64),
                                                 (1, 3, 32, 64), (1, 3, 32, 32)]


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_any_batch_size_gives_the_same_results(batch_size):
    policy = ResolutionPolicy("tile", 32, 1.0, 4)
    items = [loaded(i, hw, policy) for i, hw in enumerate([(70, 40), (32, 32), (50, 90)])]
    check(items, batch_size)


def test_results_are_yielded_without_reading_everything_first():
    policy = ResolutionPolicy("resize", 32)
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            yield loaded(i, (20, 20), policy)

    stream = map_views(source(), Recorder(), batch_size=2)
    first, _ = next(stream)
    assert first.index == 0 and len(pulled) == 2  # one full batch, not the whole dataset
    assert [item.index for item, _ in stream] == list(range(1, 10))


def test_iter_loaded_decodes_in_order_and_reports_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, hw in enumerate([(20, 30), (40, 20), (32, 32), (10, 50)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(paths[-1])
    policy = ResolutionPolicy("keep-aspect", 32)
    got = list(iter_loaded(paths, policy, read_ahead=1))
    assert [(g.index, g.path) for g in got] == list(enumerate(paths))
    for g in got:
        direct = load(g.index, g.path, policy)
        assert g.layout == direct.layout and torch.equal(g.views, direct.views)
        assert g.image.shape[:2] == g.layout.source_hw
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageError, match="bad.png"):
        list(iter_loaded([paths[0], tmp_path / "bad.png", paths[1]], policy))
