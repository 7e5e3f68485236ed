import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qarad.backbone import Backbone, BackboneConfig
from qarad.checkpoint import CheckpointError
from qarad.data.resolution import ResolutionPolicy
from qarad.detection.inference import score_images
from qarad.detection.head import cell_targets, per_sample_loss
from qarad.detection.segmenter import Segmenter, SegmenterConfig
from qarad.detection.views import ViewSet
from qarad.metrics import auroc

GRID = 8  # feature cells per side (64 px views)
CONFIG = SegmenterConfig(hidden=32, steps=150, batch_size=16, blur_sigma=1.0, negatives=("synthetic", "feature"),
                         search="exact")
HEAD_ONLY = SegmenterConfig(hidden=32, steps=150, batch_size=16, blur_sigma=1.0, negatives=("synthetic",),
                            residual=False, fusion=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


BASIS = torch.randn(152, 8, generator=torch.Generator().manual_seed(5))  # normal features span 8 directions


def _normal(generator: torch.Generator, n: int) -> torch.Tensor:
    """Features on a low-dimensional 'normal manifold' plus a little noise, as real patch features are."""
    z = torch.randn(n, GRID, GRID, 8, generator=generator)
    return (z @ BASIS.T).permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 152, GRID, GRID, generator=generator)


def _synthetic(generator: torch.Generator, n: int, pattern: torch.Tensor):
    """Normal features with a rectangle of cells shifted along a fixed 'defect' direction."""
    feats = _normal(generator, n)
    masks = torch.zeros(n, GRID * 8, GRID * 8, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, GRID - 2, (2,), generator=generator).tolist()
        h, w = torch.randint(1, 3, (2,), generator=generator).tolist()
        masks[i, y * 8:(y + h) * 8, x * 8:(x + w) * 8] = True
    targets = cell_targets(masks)
    return feats + targets[:, None] * pattern[None, :, None, None], targets, masks


def views(features, targets=None, weights=None, sources=None) -> ViewSet:
    """A ViewSet of toy views; two views per "image" unless sources are given."""
    n = len(features)
    source = torch.arange(n) // 2 if sources is None else sources
    return ViewSet(list(features), [torch.ones(features.shape[-2:], dtype=torch.bool)] * n, source,
                   None if targets is None else list(targets), weights)


def fit(config, normal, synth, targets, weights, on_step=None):
    return Segmenter(config, ResolutionPolicy(size=64)).fit(views(normal), {"synthetic": views(synth, targets, weights)},
                                                          on_step)


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    pattern = 4.0 * F.normalize(torch.randn(152, generator=g), dim=0)  # 4 noise std along one direction
    normal = _normal(g, 40)
    synth, targets, _ = _synthetic(g, 48, pattern)
    return normal, synth, targets, pattern


@pytest.fixture(scope="module", params=[CONFIG, HEAD_ONLY], ids=["residual", "head-only"])
def fitted(toy, request):
    normal, synth, targets, _ = toy
    losses = []
    model = fit(request.param, normal, synth, targets, torch.ones(len(synth)), on_step=losses.append)
    model.losses = losses
    return model


@pytest.fixture(scope="module")
def backbone():
    return Backbone(BackboneConfig(strides=(8, 16)))


def test_cell_targets_are_cell_coverage():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 0:4, 0:8] = True  # half of cell (0, 0)
    mask[0, 8:16, 8:16] = True  # all of cell (1, 1)
    assert torch.equal(cell_targets(mask), torch.tensor([[[0.5, 0.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="multiple of 8"):
        cell_targets(torch.zeros(1, 12, 16, dtype=torch.bool))


def test_loss_with_gamma_zero_is_normal_mean_plus_defect_mean_of_bce():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]], [[[0.5, -0.5], [1.0, -2.0]]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    expected = torch.stack([bce[0, [0, 0, 1], [0, 1, 0]].mean() + bce[0, 1, 1], bce[1].mean()])
    assert torch.allclose(per_sample_loss(logits, target, gamma=0.0), expected)
    focal = per_sample_loss(logits, target, gamma=2.0)
    assert (focal < expected).all()  # the focal factor only ever shrinks the per-pixel loss


def test_segmenter_learns_the_defect_pattern(fitted, toy):
    *_, pattern = toy
    assert len(fitted.losses) == CONFIG.steps and np.mean(fitted.losses[-20:]) < np.mean(fitted.losses[:20])
    feats, _, masks = _synthetic(torch.Generator().manual_seed(1), 16, pattern)  # unseen
    with torch.no_grad():
        maps = fitted.maps_from_features(feats)
    assert maps.shape == masks.shape
    if not fitted.config.fusion:  # the head alone gives probabilities; fused maps are z-score sums
        assert ((maps >= 0) & (maps <= 1)).all()
    assert auroc(maps.numpy().ravel(), masks.numpy().ravel()) > 0.9


def test_threshold_comes_from_held_out_normal_scores(fitted, toy):
    normal, synth, *_ = toy
    assert len(fitted.calibration_scores_) == 4  # 10 % of 40 normal samples
    s = fitted.calibration_scores_
    assert np.isclose(fitted.threshold_, s.mean() + 3 * s.std())
    with torch.no_grad():
        defect_scores = fitted.smooth(fitted.maps_from_features(synth[:16])).flatten(1).max(1).values
    assert (defect_scores.numpy() > fitted.threshold_).mean() > 0.8


def test_unfitted_segmenter_refuses_to_score(tmp_path):
    model = Segmenter()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.maps_from_features(torch.zeros(1, 152, 2, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.view_maps(torch.rand(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.save(tmp_path / "m")


def test_fit_rejects_wrong_inputs(toy):
    normal, synth, targets, _ = toy
    with pytest.raises(ValueError, match="PatchEmbedder features"):
        fit(CONFIG, normal[:, :100], synth, targets, torch.ones(len(synth)))
    with pytest.raises(ValueError, match="one per view"):
        fit(CONFIG, normal, synth, targets, torch.ones(len(synth) - 1))
    with pytest.raises(ValueError, match="non-negative"):
        fit(CONFIG, normal, synth, targets, -torch.ones(len(synth)))
    with pytest.raises(ValueError, match="no such defect views"):
        Segmenter(CONFIG, ResolutionPolicy(size=64)).fit(views(normal), {})
    with pytest.raises(ValueError, match="at least two normal images"):
        Segmenter(CONFIG, ResolutionPolicy(size=64)).fit(views(normal, sources=torch.zeros(40, dtype=torch.int64)),
                                                         {"synthetic": views(synth, targets, torch.ones(len(synth)))})


def test_zero_weight_samples_teach_nothing(toy):
    """QAW weight 0 on every synthetic sample: the head only ever sees 'normal', finds no defect."""
    normal, synth, targets, pattern = toy
    cfg = SegmenterConfig(hidden=32, steps=40, batch_size=16, blur_sigma=1.0, negatives=("synthetic",),
                          residual=False, fusion=False)
    model = fit(cfg, normal, synth, targets, torch.zeros(len(synth)))
    feats, _, masks = _synthetic(torch.Generator().manual_seed(1), 8, pattern)
    with torch.no_grad():
        maps = model.maps_from_features(feats)
    assert maps[masks].mean() < 0.1


def test_save_load_round_trip_gives_identical_maps(fitted, backbone, tmp_path):
    fitted.backbone = backbone
    views = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fitted.save(tmp_path / "det")
    loaded = Segmenter.load(tmp_path / "det", backbone=backbone)
    with torch.inference_mode():
        a, b = fitted.view_maps(views), loaded.view_maps(views)
    assert a.shape == (2, 64, 64) and torch.equal(a, b)
    assert loaded.threshold_ == fitted.threshold_ and loaded.config == fitted.config
    assert loaded.policy == fitted.policy
    assert np.array_equal(loaded.calibration_scores_, fitted.calibration_scores_)


def test_detector_protocol_scores_an_image_file(fitted, backbone, tmp_path):
    from PIL import Image

    fitted.backbone = backbone
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)).save(path)
    res = list(score_images(fitted, [path]))[0]
    assert res.anomaly_map.shape == (64, 64) and np.isclose(res.score, res.anomaly_map.max())


def test_load_is_strict(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    fitted.save(tmp_path / "det")
    cfg = json.loads((tmp_path / "det.json").read_text())
    bad = dict(cfg, segmenter=dict(cfg["segmenter"], unknown_knob=1))
    (tmp_path / "det.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="unknown SegmenterConfig keys"):
        Segmenter.load(tmp_path / "det")
    (tmp_path / "det.json").write_text(json.dumps(dict(cfg, method="patchcore")))
    with pytest.raises(CheckpointError, match="not a QARAD segmenter"):
        Segmenter.load(tmp_path / "det")
    (tmp_path / "det.json").write_text(json.dumps(cfg))
    tensors = load_file(str(tmp_path / "det.safetensors"))
    save_file({**tensors, "extra": torch.zeros(1)}, str(tmp_path / "det.safetensors"))
    with pytest.raises(CheckpointError, match="besides the head"):
        Segmenter.load(tmp_path / "det")
    del tensors["head.out.bias"]
    save_file(tensors, str(tmp_path / "det.safetensors"))
    with pytest.raises(CheckpointError, match="do not fit"):
        Segmenter.load(tmp_path / "det")


@pytest.mark.parametrize("policy", [ResolutionPolicy(size=64), ResolutionPolicy(mode="tile", size=64, overlap=16)])
def test_scoring_cached_features_equals_scoring_the_images(fitted, backbone, tmp_path, policy):
    from PIL import Image

    from qarad.detection.cached import cache_images, score_cached, search_cached
    from qarad.detection.views import FEATURE_DTYPE

    model = Segmenter(fitted.config, policy, backbone)
    model.head_, model.threshold_, model.reference_ = fitted.head_, fitted.threshold_, fitted.reference_
    if fitted.config.uses_bank:
        model.set_bank(fitted.memory_, fitted.memory_source_)
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate([(80, 96), (64, 64), (100, 72)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(paths[-1])
    cached = cache_images(model, paths, batch_size=2)
    reference = list(score_images(model, paths, batch_size=2))
    got = list(score_cached(model, cached, batch_size=3))  # other batches than the reference
    assert len(got) == len(reference) == 3
    for (work, score), ref in zip(got, reference):
        assert work.shape == ref.anomaly_map.shape
        np.testing.assert_allclose(work, ref.anomaly_map, rtol=1e-5, atol=1e-6)  # fused maps are ~10: float32 noise
        assert score == pytest.approx(ref.score, rel=1e-5) and score == work.max()
    if fitted.config.uses_bank:  # the bank searched once for many heads: the same maps
        searched = search_cached(model, cached, batch_size=2)
        for (work, score), (ref_work, ref_score) in zip(score_cached(model, searched, batch_size=3), got):
            np.testing.assert_allclose(work, ref_work, rtol=1e-6, atol=1e-6)
            assert score == pytest.approx(ref_score, rel=1e-6)
    # a float16 cache (as for training features) still goes through the same path
    half = [type(c)(c.layout, c.features.to(FEATURE_DTYPE)) for c in cached]
    for (work, _), (ref_work, _) in zip(score_cached(model, half), got):
        np.testing.assert_allclose(work, ref_work, rtol=1e-2, atol=1e-2)


def test_heads_sharing_a_fitted_bank_fit_as_on_their_own(toy):
    """fit(..., bank=) uses another Segmenter's bank instead of building one: with the same bank
    settings the head, reference and threshold are those of a fit on its own bank; views the bank has
    not searched yet are searched in it, and an unfitted bank is refused."""
    normal, synth, targets, _ = toy
    config = SegmenterConfig(hidden=8, steps=5, batch_size=4, negatives=("synthetic",), search="exact")

    def pools():
        return {"synthetic": views(synth, targets, torch.ones(len(synth)))}

    alone = Segmenter(config, ResolutionPolicy(size=64)).fit(views(normal), pools())
    with pytest.raises(ValueError, match="no memory bank yet"):
        Segmenter(config, ResolutionPolicy(size=64)).fit(views(normal), pools(), bank=Segmenter(config))
    bank = Segmenter(config, ResolutionPolicy(size=64)).fit_bank(views(normal))  # defect views not searched
    shared = Segmenter(config, ResolutionPolicy(size=64)).fit(views(normal), pools(), bank=bank)
    assert shared.index_ is bank.index_ and torch.equal(shared.memory_, alone.memory_)
    assert shared.reference_ == alone.reference_ and shared.threshold_ == alone.threshold_
    for k, v in alone.head_.state_dict().items():
        assert torch.equal(shared.head_.state_dict()[k], v), k
