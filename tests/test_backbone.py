import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from qarad.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneConfig, build_lite0


def _classify(model, image) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)[0].topk(5).indices.tolist()


def test_pretrained_weights_are_really_loaded():
    model = build_lite0()
    assert _classify(model, skdata.chelsea())[0] in range(281, 286)  # tabby/tiger/Persian/Siamese/Egyptian cat
    assert 967 in _classify(model, skdata.coffee())  # espresso


def test_random_weights_do_not_classify_the_cat():
    torch.manual_seed(0)
    assert _classify(build_lite0(pretrained=False), skdata.chelsea())[0] not in range(281, 286)


def test_taps_have_documented_strides_and_channels():
    bb = Backbone(BackboneConfig(strides=(8, 16, 32)))
    with torch.no_grad():
        feats = bb(torch.rand(2, 3, 64, 96))
    assert {s: tuple(f.shape) for s, f in feats.items()} == {
        8: (2, 40, 8, 12), 16: (2, 112, 4, 6), 32: (2, 320, 2, 3)}


def test_backbone_is_frozen_and_rejects_bad_sizes():
    bb = Backbone()
    bb.train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="multiple of 32"):
        bb(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match="unknown feature strides"):
        Backbone(BackboneConfig(strides=(4,)))


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (160, 96)])
def test_onnxruntime_embedder_matches_eager_torch(hw):
    from qarad.backbone import PatchEmbedder

    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16))))
    views = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, eager = embedder(views), embedder.features(views)
    assert fast.shape == eager.shape == (2, 152, hw[0] // 8, hw[1] // 8)
    assert torch.allclose(fast, eager, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        embedder(torch.rand(1, 3, 64, 72))


def test_torch_runtime_and_unknown_runtime():
    from qarad.backbone import PatchEmbedder

    backbone = Backbone(BackboneConfig(strides=(8, 16)))
    views = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(PatchEmbedder(backbone, runtime="torch")(views), PatchEmbedder(backbone).features(views))
    with pytest.raises(ValueError, match="unknown backbone runtime"):
        PatchEmbedder(backbone, runtime="tvm")
