"""ONNX export of a trained detector's per-view scoring (what `qarad export` writes).

The graph holds the per-view steps of `inference.score_images`: ImageNet normalisation, the
frozen backbone, the detector's patch scores (PatchCore nearest-neighbour distance to the memory
bank, or the QARAD head on features, residuals and distances, fused with the distance) and bilinear upsampling, giving `view_map`. It then blurs
each view on its own and takes the maximum (`anomaly_map`, `score`). score_images blurs after
stitching; with one view per image (resize policy) that is the same thing, so there the outputs
are final. Keep-aspect and tile need the image's Layout: the caller stitches `view_map`, blurs
the stitched map and takes its maximum (the sidecar spells this out).
"""
from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..data.resolution import ResolutionPolicy
from .anomaly_map import gaussian_blur, upsample
from ..backbone import PATCH_STRIDE, PatchEmbedder
from .patchcore import PatchCore
from .fusion import LEGACY_IMAGE_RULE, image_score
from .head import cell_scores, head_inputs
from .segmenter import Segmenter

OPSET = 17  # within what the TorchScript exporter and the pinned onnxruntime support
INPUT = "views"
OUTPUTS = ("view_map", "anomaly_map", "score")


def _nearest(q: torch.Tensor, memory_t: torch.Tensor, memory_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, C) queries -> squared distance to the nearest bank row and that row (exact search)."""
    # the expanded form ||q||^2 - 2 q.m + ||m||^2; the graph searches exactly, where the torch
    # path may use the IVF index (detection/knn.py): equal on small banks, within its error on large
    d = torch.addmm(memory_sq[None], q, memory_t, alpha=-2.0) + (q * q).sum(1, keepdim=True)
    best, rows = d.min(1)
    return best.clamp_min(0).sqrt(), rows


class NearestNeighbourScores(nn.Module):
    """(N, C, h, w) patch features -> (N, h, w) distance to the nearest memory-bank row."""

    def __init__(self, memory: torch.Tensor):
        super().__init__()
        memory = memory.detach().float()
        self.register_buffer("memory_t", memory.T.contiguous())  # (C, M): the bank becomes an initializer
        self.register_buffer("memory_sq", (memory * memory).sum(1))  # (M,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        c = features.shape[1]
        q = features.permute(0, 2, 3, 1).reshape(-1, c)  # (N*h*w, C)
        return _nearest(q, self.memory_t, self.memory_sq)[0].view_as(features[:, 0])


class SegmenterScores(nn.Module):
    """(N, C, h, w) patch features -> (N, h, w) the QARAD detector's cell scores (segmenter.cell_scores)."""

    def __init__(self, detector: Segmenter):
        super().__init__()
        self.head = detector.head_
        self.config, self.reference = detector.config, detector.reference_
        self.head_weight = detector.head_weight_  # the gate chosen on validation (detection/fusion.py)
        if self.config.uses_bank:
            memory = detector.memory_.detach().float()
            self.register_buffer("memory", memory)
            self.register_buffer("memory_t", memory.T.contiguous())
            self.register_buffer("memory_sq", (memory * memory).sum(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dist = nearest = None
        if self.config.uses_bank:
            b, c, h, w = features.shape
            dist, rows = _nearest(features.permute(0, 2, 3, 1).reshape(-1, c), self.memory_t, self.memory_sq)
            nearest = self.memory[rows].view(b, h, w, c).permute(0, 3, 1, 2)
            dist = dist.view(b, h, w)
        inputs = head_inputs(features, nearest, dist, self.config.residual, self.reference.dist_scale)
        return cell_scores(self.head(inputs), dist, self.config.fusion, self.reference, self.head_weight)


class ViewScorer(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> view_map (N, H, W), anomaly_map (N, H, W) blurred, score (N,)."""

    def __init__(self, embedder: PatchEmbedder, patch_scores: nn.Module, blur_sigma: float,
                 image_rule: str = LEGACY_IMAGE_RULE):
        super().__init__()
        self.embedder = embedder
        self.patch_scores = patch_scores
        self.blur_sigma = blur_sigma
        self.image_rule = image_rule  # top-P%: k is fixed by the traced view size (see the sidecar)

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cells = self.patch_scores(self.embedder(views))  # (N, h, w) at stride 8
        h, w = cells.shape[-2:]
        view_map = upsample(cells, (h * PATCH_STRIDE, w * PATCH_STRIDE))
        anomaly_map = gaussian_blur(view_map, self.blur_sigma)
        return view_map, anomaly_map, image_score(anomaly_map, self.image_rule)


def view_scorer(detector: PatchCore | Segmenter) -> ViewScorer:
    """The detector's per-view scoring as one module, sharing its weights and device."""
    detector._check_fitted()
    if isinstance(detector, PatchCore):
        embedder, scores = detector.embedder, NearestNeighbourScores(detector.memory_)
    elif isinstance(detector, Segmenter):
        embedder, scores = detector._embedder(), SegmenterScores(detector)
    else:
        raise TypeError(f"cannot export a {type(detector).__name__}; expected PatchCore or Segmenter")
    # the graph's score is the image score only under resize (one view is the image); elsewhere the
    # caller applies the rule to the stitched map (the sidecar says so) and per-view scores stay maxima
    rule = _rule(detector) if detector.policy.mode == "resize" else LEGACY_IMAGE_RULE
    return ViewScorer(embedder, scores, detector.config.blur_sigma, rule).eval()


def _rule(detector: PatchCore | Segmenter) -> str:
    return getattr(detector, "image_rule_", LEGACY_IMAGE_RULE)


def _outside_graph(policy: ResolutionPolicy, rule: str = LEGACY_IMAGE_RULE) -> list[str]:
    before = ("make views with qarad.data.resolution.Layout: scale with bilinear antialiased resizing to the "
              "working size, pad bottom/right by replicating the border, cut views at layout.origins")
    if policy.mode == "resize":
        return [before, "nothing after: anomaly_map is the image's map over the working image and score its "
                        "image score"]
    return [before, "stitch view_map with layout.stitch (crops padding; tile: ramp-weighted mean of overlaps)",
            ("blur the stitched map with gaussian_blur(map, blur_sigma): separable, radius ceil(4 sigma), reflect "
             "padding (replicate on maps no larger than the radius)"),
            f"image score = {rule} of the blurred map ('top-P%': the mean of its P% highest pixels); "
            "anomaly_map/score outputs are per view only"]


def sidecar(detector: PatchCore | Segmenter, onnx_bytes: bytes) -> dict:
    """What a consumer needs besides the graph; JSON-safe (an infinite threshold becomes null)."""
    policy = detector.policy
    threshold = detector.threshold_ if math.isfinite(detector.threshold_) else None
    spatial = ["height", "width"] if policy.mode == "keep-aspect" else [policy.size, policy.size]
    return {
        "qarad_version": __version__, "format": "onnx", "opset": OPSET,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "method": detector.method, "backbone": detector.config.backbone, "policy": policy.to_dict(),
        "threshold": threshold,
        "blur_sigma": detector.config.blur_sigma,
        "inputs": {INPUT: {"dtype": "float32", "shape": ["batch", 3, *spatial],
                           "values": "RGB in [0, 1]; normalisation happens inside the graph"}},
        "outputs": {"view_map": {"dtype": "float32", "shape": ["batch", *spatial],
                                 "values": "per-view anomaly map before stitching and blur"},
                    "anomaly_map": {"dtype": "float32", "shape": ["batch", *spatial],
                                    "values": "view_map blurred on its own"},
                    "score": {"dtype": "float32", "shape": ["batch"],
                              "values": f"resize: the image score ({_rule(detector)} of anomaly_map); "
                                        "other policies: maximum of the view's anomaly_map"}},
        "image_rule": _rule(detector),  # chosen on the validation split (detection/fusion.py)
        # the scoring region is not in the graph: a run that scores its part only says so here
        "scoring_region": ("part: lower the blurred map outside Foreground.mask(image) (data/foreground.py, "
                           "fitted state in the run's model.json 'foreground') to its minimum inside, before the "
                           "image score; the graph's anomaly_map and score do not" if getattr(
                               detector, "foreground_", None) is not None else "the whole image"),
        "head_weight": getattr(detector, "head_weight_", None),
        "outside_graph": _outside_graph(policy, _rule(detector)),
    }


def export_onnx(detector: PatchCore | Segmenter, path: str | Path) -> None:
    """Write the detector's ViewScorer to `path` as ONNX (the caller handles atomic placement)."""
    policy = detector.policy
    scorer = view_scorer(detector)
    # keep-aspect views differ in size from image to image; resize and tile views are always S x S,
    # and a fixed size lets onnxruntime reject a wrongly sized input instead of scoring it
    spatial = policy.mode == "keep-aspect"
    image_axes = {0: "batch", 1: "height", 2: "width"} if spatial else {0: "batch"}
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"},
            "view_map": image_axes, "anomaly_map": image_axes, "score": {0: "batch"}}
    example = torch.rand(1, 3, policy.size, policy.size, generator=torch.Generator().manual_seed(0))
    example = example.to(detector.device)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-side shape checks (multiple of 32, padding mode); they are
        # constants for every valid view of this policy, which is what the graph should hold.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(scorer, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=list(OUTPUTS), dynamic_axes=axes)
