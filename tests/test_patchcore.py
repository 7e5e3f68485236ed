import numpy as np
import pytest
import torch
from PIL import Image

from qarad.checkpoint import CheckpointError
from qarad.data.resolution import ResolutionPolicy
from qarad.detection.evaluate import evaluate
from qarad.detection.inference import score_images
from qarad.detection.patchcore import PatchCore, PatchCoreConfig
from qarad.data.mvtec import Sample


def _texture(rng, h, w):
    """Smooth random stripes: a 'material' the backbone sees as consistent."""
    y, x = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.2 * np.sin(x / 3.0 + rng.uniform(0, 6)) + 0.05 * rng.standard_normal((h, w))
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 1)


def _write(path, arr):
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("pc")
    rng = np.random.default_rng(0)
    train = [_write(root / f"n{i}.png", _texture(rng, 64, 64)) for i in range(4)]
    defect = _texture(rng, 64, 64)
    defect[20:36, 24:40] = [0.05, 0.9, 0.05]  # a green square on grey stripes
    mask = np.zeros((64, 64), np.uint8)
    mask[20:36, 24:40] = 255
    _write(root / "d.png", defect)
    Image.fromarray(mask).save(root / "d_mask.png")
    good = _write(root / "g.png", _texture(rng, 64, 64))
    test = [Sample(good, "good"), Sample(root / "d.png", "square", root / "d_mask.png")]
    return root, train, test


@pytest.fixture(scope="module")
def fitted(tiny_set):
    _, train, _ = tiny_set
    return PatchCore(PatchCoreConfig(coreset_ratio=0.5, blur_sigma=1.0), ResolutionPolicy(size=64)).fit(train)


def test_fit_sets_learned_attributes(fitted):
    assert fitted.memory_.shape[1] == 152 and len(fitted.memory_) == len(fitted.memory_source_)
    assert np.isfinite(fitted.threshold_) and len(fitted.calibration_scores_) == 4


def test_unfitted_detector_refuses_to_score():
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCore().view_maps(torch.rand(1, 3, 64, 64))


def test_defect_region_scores_highest(fitted, tiny_set):
    _, _, test = tiny_set
    ev = evaluate(fitted, test)
    assert ev.overall["image_auroc"] == 1.0
    assert ev.overall["pixel_auroc"] > 0.9
    res = list(score_images(fitted, [test[1].image]))[0]
    inside, outside = res.anomaly_map[20:36, 24:40].mean(), res.anomaly_map[:12].mean()
    assert inside > 2 * outside


def test_save_load_round_trip_gives_identical_maps(fitted, tiny_set, tmp_path):
    _, _, test = tiny_set
    fitted.save(tmp_path / "model")
    loaded = PatchCore.load(tmp_path / "model")
    a = list(score_images(fitted, [test[1].image]))[0]
    b = list(score_images(loaded, [test[1].image]))[0]
    assert np.array_equal(a.anomaly_map, b.anomaly_map) and loaded.threshold_ == fitted.threshold_
    assert loaded.policy == fitted.policy and loaded.config == fitted.config


def test_load_rejects_tampered_config(fitted, tmp_path):
    import json

    fitted.save(tmp_path / "model")
    cfg = json.loads((tmp_path / "model.json").read_text())
    cfg["patchcore"]["unknown_knob"] = 1
    (tmp_path / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown PatchCoreConfig keys"):
        PatchCore.load(tmp_path / "model")


def test_fit_is_deterministic(tiny_set):
    _, train, _ = tiny_set
    a = PatchCore(PatchCoreConfig(coreset_ratio=0.3), ResolutionPolicy(size=64)).fit(train)
    b = PatchCore(PatchCoreConfig(coreset_ratio=0.3), ResolutionPolicy(size=64)).fit(train)
    assert torch.equal(a.memory_, b.memory_) and a.threshold_ == b.threshold_


def test_tile_policy_scores_a_long_image_in_bounded_batches(tiny_set, tmp_path):
    _, train, _ = tiny_set
    rng = np.random.default_rng(1)
    long = _texture(rng, 300, 2000)
    long[140:150, 1500:1530] = [0.05, 0.9, 0.05]
    path = _write(tmp_path / "long.png", long)
    model = PatchCore(PatchCoreConfig(coreset_ratio=0.5, blur_sigma=1.0),
                      ResolutionPolicy(mode="tile", size=64, overlap=16)).fit(train)
    seen = []
    original = model.view_maps
    model.view_maps = lambda v: (seen.append(len(v)), original(v))[1]
    res = list(score_images(model, [path], batch_size=4))[0]
    assert res.anomaly_map.shape == (300, 2000)  # native resolution, stitched
    assert max(seen) <= 4 and sum(seen) == len(res.layout.origins)
    peak = np.unravel_index(np.argmax(res.anomaly_map), res.anomaly_map.shape)
    assert 130 <= peak[0] <= 160 and 1490 <= peak[1] <= 1540
