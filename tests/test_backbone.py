import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from qarad.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneConfig, build_classifier
from qarad.backbone_config import BACKBONES

LITE0, LITE2 = "efficientnet-lite0", "efficientnet-lite2"
CATS = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


def _classify(model, image, size: int = 224) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)[0].topk(5).indices.tolist()


def test_pretrained_weights_are_really_loaded():
    model = build_classifier(LITE0)
    assert _classify(model, skdata.chelsea())[0] in CATS
    assert 967 in _classify(model, skdata.coffee())  # espresso


def test_pretrained_lite2_weights_are_really_loaded():
    model = build_classifier(LITE2)
    size = BACKBONES[LITE2].native_size  # 260
    assert _classify(model, skdata.chelsea(), size)[0] in CATS
    assert 967 in _classify(model, skdata.coffee(), size)  # espresso


def test_random_weights_do_not_classify_the_cat():
    torch.manual_seed(0)
    assert _classify(build_classifier(LITE0, pretrained=False), skdata.chelsea())[0] not in CATS
    with pytest.raises(ValueError, match="unknown backbone"):
        build_classifier("efficientnet-b7")


@pytest.mark.parametrize("name, channels", [(LITE0, (40, 112, 320)), (LITE2, (48, 120, 352))])
def test_taps_have_documented_strides_and_channels(name, channels):
    bb = Backbone(BackboneConfig(name, strides=(8, 16, 32)), pretrained=False)
    with torch.no_grad():
        feats = bb(torch.rand(2, 3, 64, 96))
    assert {s: tuple(f.shape) for s, f in feats.items()} == {
        8: (2, channels[0], 8, 12), 16: (2, channels[1], 4, 6), 32: (2, channels[2], 2, 3)}
    assert bb.channels() == dict(zip((8, 16, 32), channels))


@pytest.mark.parametrize("name", [LITE0, LITE2])
def test_each_tap_is_the_last_block_of_its_stride_stage(name):
    """The rule behind the table: the tapped block is at its stride, and the next block is not."""
    net = build_classifier(name, pretrained=False)
    x = torch.rand(1, 3, 64, 64)
    strides = []
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
            strides.append((64 // x.shape[-1], x.shape[1]))
    for stride, (block, channels) in BACKBONES[name].taps.items():
        assert strides[block] == (stride, channels)
        assert block == len(strides) - 1 or strides[block + 1][0] == 2 * stride


def test_backbone_is_frozen_and_rejects_bad_sizes():
    bb = Backbone()
    bb.train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="multiple of 32"):
        bb(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match="unknown feature strides"):
        Backbone(BackboneConfig(strides=(4,)))
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneConfig("efficientnet-b7")


@pytest.mark.parametrize("name, channels, hw", [(LITE0, 152, (64, 64)), (LITE0, 152, (96, 160)),
                                                (LITE0, 152, (160, 96)), (LITE2, 168, (96, 160))])
def test_onnxruntime_embedder_matches_eager_torch(name, channels, hw):
    from qarad.backbone import PatchEmbedder

    embedder = PatchEmbedder(Backbone(BackboneConfig(name, strides=(8, 16))))
    assert embedder.channels == channels == BackboneConfig(name).feature_channels
    views = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, eager = embedder(views), embedder.features(views)
    assert fast.shape == eager.shape == (2, channels, hw[0] // 8, hw[1] // 8)
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
