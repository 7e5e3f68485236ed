"""The detectors' settings, torch-free: `qarad train` and `qarad benchmark` build their detector flags
from these fields (flags.py), so each setting is defined once, and a flag of the qarad detector alone
is refused by --method patchcore (commands/detect.py) because it is not a PatchCoreConfig field.

    PatchCoreConfig  the memory bank and its search; its flag fields (--coreset-ratio ... --batch-size)
                     are both methods' (the qarad detector stands on the same bank)
    SegmenterConfig  the qarad detector's head (detection/segmenter.py)
    QaradTraining    what that head learns from (detection/train.py)
    SearchConfig     the nearest-neighbour search both share (detection/knn.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .backbone_config import BACKBONES, DETECTOR_BACKBONE, BackboneConfig
from .flags import check_float, check_int, flag, non_negative_float, non_negative_int, positive_int, share

if TYPE_CHECKING:
    from .data.real_defects import RealDefects

SEARCH_MODES = ("exact", "ivf", "hnsw")
NEGATIVE_SOURCES = ("synthetic", "perlin", "feature", "real")  # real: real defect shots (train.real_features)
WEIGHTINGS = ("none", "linear", "softmax")  # quality/weighting.py's calibrations


@dataclass(frozen=True)
class SearchConfig:
    mode: str = "ivf"
    nprobe: int = 8  # IVF cells scanned per query (of ~rows/64)
    seed: int = 0  # k-means initialisation of the IVF centroids
    refine: float = 0.0  # share of each call's queries (largest IVF distances) searched again exactly
    hnsw_links: int = 32  # hnsw: graph neighbours per row (M)
    ef_search: int = 64  # hnsw: candidates kept while walking the graph

    def __post_init__(self):
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {self.mode!r}; choose from {SEARCH_MODES}")
        if self.nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {self.nprobe}")
        if self.hnsw_links < 2 or self.ef_search < 1:
            raise ValueError(f"hnsw needs hnsw_links >= 2 and ef_search >= 1, got {self.hnsw_links}, {self.ef_search}")
        if not 0.0 <= self.refine <= 1.0:
            raise ValueError(f"refine must be a share in [0, 1], got {self.refine}")


@dataclass(frozen=True)
class PatchCoreConfig:
    coreset_ratio: float = flag(0.1, "fraction of patches kept in the memory bank, in (0, 1] (default 0.1)",
                                parse=share)
    projection_dim: int = 128
    coreset_partition: int = 16384  # patches per exact-greedy partition (see coreset.py)
    # cap on memory bank rows (bounds scoring cost on large images)
    memory_limit: int | None = flag(None, "cap on memory-bank rows (default: none)", parse=positive_int)
    blur_sigma: float = 4.0
    calibration_images: int = 50  # normal training images scored leave-one-out for the threshold
    batch_size: int = flag(8, "views per backbone batch (default 8)", parse=positive_int)
    seed: int = flag(0, "seed of the coreset, the search's k-means and the qarad head (default 0)")
    search: str = flag("ivf", "nearest-neighbour search in the memory bank: ivf (faiss inverted lists, fast), "
                              "exact or hnsw (faiss graph; benchmarks/search.py). Default ivf",
                       choices=SEARCH_MODES)
    # IVF cells scanned per query: the most a 15 img/s budget affords on 2 cores (benchmarks/search.py:
    # mean distance error vs exact on held-out normals 0.40% magnetic tile, 0.08% DeepPCB; nprobe 8
    # doubled it and cost 0.008 image AUROC on magnetic tile)
    nprobe: int = 16
    # share of each image's patches (largest IVF distances) searched again exactly: the image score
    # reads the largest distances, the ones IVF overestimates most (detection/knn.py)
    refine: float = 0.03
    backbone: str = flag(DETECTOR_BACKBONE, "frozen ImageNet backbone whose stride 8 + 16 features both methods "
                                            "use (stored with the run; eval/predict/export reuse it). Default: "
                                            f"{DETECTOR_BACKBONE}", choices=tuple(BACKBONES))

    def __post_init__(self):
        check_float("--coreset-ratio", self.coreset_ratio, 0.0, 1.0, low_open=True)
        check_int("--memory-limit", self.memory_limit, optional=True)
        check_int("batch_size", self.batch_size)  # 0 never ends a batch: the fit would loop for ever
        check_int("projection_dim", self.projection_dim)
        check_int("coreset_partition", self.coreset_partition)
        check_int("calibration_images", self.calibration_images, 0)  # 0: no threshold (inf)
        check_float("blur_sigma", self.blur_sigma, 0.0)
        BackboneConfig(self.backbone)  # validates
        SearchConfig(self.search, self.nprobe, self.seed, self.refine)

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(self.backbone, strides=(8, 16))


@dataclass(frozen=True)
class SegmenterConfig:
    hidden: int = 64  # 3x3 convs dominate the cost: 128 channels make every step ~3.5x slower
    focal_gamma: float = 2.0  # 0 gives plain BCE
    lr: float = 1e-3
    steps: int = flag(1000, "head training steps (default 1000)", parse=non_negative_int)
    batch_size: int = 16
    blur_sigma: float = 4.0
    seed: int = 0
    # the head also reads the residual to the nearest bank row and its distance
    residual: bool = flag(True, "head reads frozen features only, not the residual to the memory bank")
    # map = z(head logit) + z(nearest-neighbour distance), z on held-out normals
    fusion: bool = flag(True, "map = head probability alone, not fused with the nearest-neighbour distance")
    # which kinds of defects the head learns from; "feature" (noise in feature space) is available but
    # off: it lowered every metric on magnetic tile and mpdd (BENCHMARKS.md, ablation)
    negatives: tuple[str, ...] = flag(
        ("synthetic", "perlin"),
        "defects the head learns from: synthetic (--synth, QAW-weighted), perlin (DRAEM-style texture patches on "
        "the normal images; needs no ARAS model), feature (noise in feature space; measured worse, BENCHMARKS.md), "
        "real (--real-defects; added when they are given). Default: synthetic perlin", choices=NEGATIVE_SOURCES)
    normal_fraction: float = 0.375  # share of each batch that is normal views
    feature_noise: float = 1.0  # feature-space negatives: noise std in units of each channel's std
    coreset_ratio: float = 0.1  # the memory bank, as PatchCore's (its flag is PatchCoreConfig's)
    memory_limit: int | None = None
    search: str = "ivf"  # nearest-neighbour search (detection/knn.py)
    nprobe: int = 8
    backbone: str = DETECTOR_BACKBONE  # whose stride 8 + 16 features (backbone_config.BACKBONES)

    def __post_init__(self):
        check_float("--coreset-ratio", self.coreset_ratio, 0.0, 1.0, low_open=True)  # the bank, as PatchCore's
        check_int("--memory-limit", self.memory_limit, optional=True)
        check_int("--steps", self.steps, 0)
        check_int("batch_size", self.batch_size, 2)  # one normal view and at least one defect view
        check_int("hidden", self.hidden)
        check_float("lr", self.lr, 0.0, low_open=True)
        for name in ("focal_gamma", "blur_sigma", "feature_noise"):
            check_float(name, getattr(self, name), 0.0)
        unknown = set(self.negatives) - set(NEGATIVE_SOURCES)
        if unknown or not self.negatives:
            raise ValueError(f"negatives must be a non-empty subset of {NEGATIVE_SOURCES}, got {self.negatives}")
        if not 0 < self.normal_fraction < 1:
            raise ValueError(f"normal_fraction must be in (0, 1), got {self.normal_fraction}")
        SearchConfig(self.search, self.nprobe)  # validates
        BackboneConfig(self.backbone)  # validates

    @property
    def uses_bank(self) -> bool:
        return self.residual or self.fusion

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(self.backbone, strides=(8, 16))

    @property
    def feature_channels(self) -> int:
        return self.backbone_config.feature_channels

    @property
    def in_channels(self) -> int:
        return 2 * self.feature_channels + 1 if self.residual else self.feature_channels


@dataclass(frozen=True)
class QaradTraining:
    """What the qarad detector's head learns from, beside its SegmenterConfig (stored with the run)."""

    synth: str | Path | None = None  # `synth` + `score` folder; needed when negatives has "synthetic"
    weighting: str = flag("linear", "QAW calibration of sample weights (default linear)", choices=WEIGHTINGS)
    max_normal_views: int = flag(4000, "cap on cached normal views (default 4000)", parse=positive_int)
    perlin_samples: int = flag(200, "Perlin texture patches drawn, when the head learns from them (default 200)",
                               parse=positive_int)
    batch_size: int = 8  # views per backbone batch while caching features (the head's is SegmenterConfig's)
    # real defect shots (data/real_defects.py: select_real_defects) the head learns from as weighted
    # positives, when negatives has "real"; `evaluate` leaves exactly these images out of the test split
    real_defects: "RealDefects | None" = None
    real_weight: float = flag(1.0, "loss weight of each real defect view (--real-defects; default 1)",
                              parse=non_negative_float)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"--weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_int("--max-normal-views", self.max_normal_views)
        check_int("--perlin-samples", self.perlin_samples)
        check_int("--batch-size", self.batch_size)
        check_float("--real-weight", self.real_weight, 0.0)
