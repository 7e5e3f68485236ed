import numpy as np
import pytest
import torch

from qarad.detection.head import SegmentationHead, per_sample_loss
from qarad.detection.segmenter import SegmenterConfig
from qarad.quality.weighting import WeightingConfig, weighted_loss, weights


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_none_gives_unit_weights_of_the_same_type():
    s = np.array([-1.0, 0.2, 0.9])
    assert np.array_equal(weights(s, WeightingConfig("none")), np.ones(3))
    t = weights(torch.tensor([0.1, 0.5], dtype=torch.float32), WeightingConfig("none"))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and torch.equal(t, torch.ones(2))


def test_linear_hand_values_floor_and_cap():
    cfg = WeightingConfig("linear", a=0.0, b=0.3, w_min=0.1)
    s = np.array([-0.5, 0.0, 0.03, 0.06, 0.15, 0.3, 0.9])
    expected = np.array([0.1, 0.1, 0.1, 0.2, 0.5, 1.0, 1.0])  # (s - 0) / 0.3, floored at 0.1, capped at 1
    assert np.allclose(weights(s, cfg), expected)
    assert torch.allclose(weights(torch.tensor(s), cfg), torch.tensor(expected, dtype=torch.float64))


def test_softmax_hand_values_and_mean_exactly_one():
    cfg = WeightingConfig("softmax", temperature=0.05)
    s = np.array([0.0, 0.05 * np.log(3.0)])  # exp(s / T) = [1, 3] -> softmax [1/4, 3/4] -> x2
    assert np.allclose(weights(s, cfg), [0.5, 1.5])
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 257)
    w = weights(s, cfg)
    assert w.shape == s.shape and np.isclose(w.mean(), 1.0, rtol=0, atol=1e-12) and (w > 0).all()
    t = weights(torch.tensor(s, dtype=torch.float32), cfg)
    assert torch.isclose(t.mean(), torch.tensor(1.0), atol=1e-5)
    assert np.allclose(t.numpy(), w, atol=1e-4)


def test_softmax_is_stable_at_tiny_temperature():
    w = weights(np.array([1.0, 0.999, -1.0]), WeightingConfig("softmax", temperature=1e-4))
    assert np.isfinite(w).all() and np.isclose(w.sum(), 3.0)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown calibration"):
        WeightingConfig("sigmoid")
    with pytest.raises(ValueError, match="b > a"):
        WeightingConfig(a=0.5, b=0.5)
    with pytest.raises(ValueError, match="temperature"):
        WeightingConfig(temperature=0.0)


def test_weighted_loss_is_mean_of_products():
    loss = weighted_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 0.25]))
    assert torch.isclose(loss, torch.tensor((0.5 + 2.0 + 1.0) / 3))
    with pytest.raises(ValueError, match="both be"):
        weighted_loss(torch.ones(3), torch.ones(2))


def _logit_grads(w1: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 4, 4, generator=g).requires_grad_()
    target = (torch.rand(3, 4, 4, generator=g) > 0.7).float()
    weighted_loss(per_sample_loss(logits, target), torch.tensor([1.0, w1, 0.7])).backward()
    return logits.grad


def test_one_samples_gradient_scales_linearly_with_its_weight():
    g1, g2 = _logit_grads(0.3), _logit_grads(0.6)
    assert torch.allclose(g2[1], 2 * g1[1], atol=1e-7) and g1[1].abs().sum() > 0
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[2], g2[2])  # the others are untouched


def test_parameter_gradient_is_linear_in_one_samples_weight():
    torch.manual_seed(0)
    head = SegmentationHead(SegmenterConfig(hidden=8, residual=False)).eval()  # eval: no batch-norm coupling
    feats = torch.randn(3, 152, 4, 4)
    target = torch.zeros(3, 4, 4)
    target[1, 1:3, 1:3] = 1.0

    def grad(w1: float) -> torch.Tensor:
        head.zero_grad()
        weighted_loss(per_sample_loss(head(feats), target), torch.tensor([1.0, w1, 1.0])).backward()
        return torch.cat([p.grad.flatten() for p in head.parameters()])

    g0, g1, g2 = grad(0.0), grad(0.5), grad(1.0)
    assert torch.allclose(g2 - g1, g1 - g0, atol=1e-6) and (g1 - g0).abs().max() > 1e-6
