"""The validation split without labels (DESIGN.md 4.6b): the run checks itself on its own data.

At train time a seeded share of the normal training images is held out: never in the memory bank,
never in head training. The labelled validation set is then
  - the held-out normals themselves (label 0, every pixel normal),
  - the ARAS samples of the run's synth folder whose `source` is a held-out normal (they are left
    out of head training: synthetic_features(held_out=...)); copy-paste folders (`qarad paste`)
    given as --synth are the same kind of folder and are split the same way,
  - one Perlin texture patch drawn on each held-out normal, at source resolution, from a random
    stream of its own (never a patch the head trained on),
  - one procedural defect (defects/renderer.py: scratches, cracks, stains, ... on a proposed mask)
    drawn on each held-out normal, from a stream of its own: a kind of defect the head never learns
    from (it learns from ARAS samples and Perlin patches).
Every candidate of a run (PatchCore or qarad, any size or backbone) with the same seed and
synth folder sees exactly these images, and maps are graded on one grid (the source image shrunk
to GRADE_SIDE px at most), so their validation metrics compare.

Why 15% (VAL_SHARE): the smallest shared set has 53 normal images, so 15% holds out 8 normals
(+ 8 Perlin patches + the ARAS samples on them), the fewest that still tell an image AUROC of
0.9 from 1.0; the bank loses 15% of its images, and its coreset keeps 10% of the patches anyway.
Chosen from set sizes, not from any test metric.

On it, `validate` chooses for a qarad run the head's weight against the bank (fusion.HEAD_WEIGHTS;
0 = the bank alone), the image-score rule (fusion.IMAGE_RULES) and the scoring region (the whole
image, or the part: scoring_region.py, tried when the normal images show a plain backdrop) by one
criterion, the mean of image AUROC and AUPRO on the validation source SELECTION_SOURCE
("procedural"); ties go to the smaller weight, then to the whole image, so a head that does not
help falls back to the bank. The threshold is then mean + 3 std of the held-out normal images'
scores under the chosen setting.

Why the procedural defects choose, not the ARAS samples or Perlin patches: the head is trained on
those two generators, so on their held-out draws it is graded on the kind of defect it memorised,
and the gate (and the choice between a qarad and a PatchCore candidate) leans towards the head.
Real defects are a kind the head never saw; so are the procedural ones. This is fixed a priori,
from how the sets are made, not from test metrics (the first selection run, which chose on
ARAS + Perlin, validated near 1.0 on ARAS samples for every head weight: no signal there);
benchmarks/selection.py measures how each source ranks candidates against their test metrics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as M
from ..data.io import read_image, read_mask
from ..data.resolution import ResolutionPolicy
from ..data.stream import Loaded, map_views
from ..defects.baselines import perlin_texture, procedural
from ..defects.masks import foreground_mask
from ..progress import bar
from ..synthesis.jobs import MANIFEST, read_manifest
from ..validation_config import VAL_SHARE, ValidationConfig  # noqa: F401 (re-exported: the split's setting)
from .evaluate import summary_metrics
from .fusion import HEAD_WEIGHTS, IMAGE_RULES, image_score

VALIDATION = "metrics_validation.json"  # in the run folder
MIN_HELD, MIN_TRAIN = 3, 3  # fewer held-out or training normals: no validation split (said so)
SPLIT_STREAM, PERLIN_STREAM, PROCEDURAL_STREAM = 1, 2, 3  # random streams of (seed, stream): not training's draws
GRADE_SIDE = 256  # maps and masks graded on the source grid shrunk to this longest side
# validation sets: held-out normals + that kind of defect ("both": ARAS and Perlin, what the head learns from)
SOURCES = ("aras", "perlin", "procedural", "both")
SELECTION_SOURCE = "procedural"  # what the gate and --auto read: defects the head never learns from
CRITERION = ("image_auroc", "aupro")  # the gate's criterion: their mean
REPORTED = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap")


@dataclass(frozen=True)
class Split:
    train: list[Path]  # normal images the bank and the head see
    held: list[Path]  # the validation split's normals ([] when there is none)


def split_normals(paths: list[Path], share: float, seed: int) -> Split:
    """A seeded `share` of `paths` held out (at least MIN_HELD), the rest in training order; no split
    when share is 0 or fewer than MIN_HELD + MIN_TRAIN images."""
    k = max(MIN_HELD, round(share * len(paths))) if share > 0 else 0
    if k == 0 or len(paths) - k < MIN_TRAIN:
        return Split(list(paths), [])
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(paths))
    held = set(order[:k].tolist())
    return Split([p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held])


@dataclass(frozen=True)
class Item:
    kind: str  # "normal", "aras", "perlin" or "procedural"
    image: Path  # the image (a held-out normal, a synth sample) or the normal a drawn defect goes on
    mask: Path | None = None  # an ARAS sample's mask
    seed: int = 0  # a Perlin patch's or procedural defect's draw


def _inside(root: Path, relative: str) -> Path:
    """A manifest's path, confined to its folder."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{root / MANIFEST}: {relative!r} points outside the synth folder")
    return path


def items(held: list[Path], synth_dir: str | Path | None, seed: int) -> list[Item]:
    """The validation set of a split's held-out normals (see the module docstring)."""
    out = [Item("normal", Path(p)) for p in held]
    out += [Item("perlin", Path(p), seed=i) for i, p in enumerate(held)]
    out += [Item("procedural", Path(p), seed=i) for i, p in enumerate(held)]
    if synth_dir is not None and held:
        root = Path(synth_dir)
        names = {str(Path(p).resolve()) for p in held}
        out += [Item("aras", _inside(root, e["image"]), _inside(root, e["mask"]))
                for e in read_manifest(root / MANIFEST) if str(Path(e["source"]).resolve()) in names]
    return out


def _load(index: int, item: Item, seed: int, policy: ResolutionPolicy) -> tuple[Loaded, np.ndarray]:
    """(the item's views, its ground-truth mask at source resolution)."""
    image = read_image(item.image)
    if item.kind == "perlin":
        drawn = perlin_texture(image, np.random.default_rng([seed, PERLIN_STREAM, item.seed]),
                               foreground=foreground_mask(image))
        image, mask = drawn.image, drawn.mask.astype(bool)
    elif item.kind == "procedural":
        drawn = procedural(image, np.random.default_rng([seed, PROCEDURAL_STREAM, item.seed]),
                           foreground=foreground_mask(image))
        image, mask = drawn.image, drawn.mask.astype(bool)
    elif item.kind == "aras":
        mask = read_mask(item.mask, image.shape[:2]).astype(bool)
    else:
        mask = np.zeros(image.shape[:2], bool)
    layout = policy.layout(*image.shape[:2])
    return Loaded(index, item.image, image, layout, layout.views(image)), mask


def grade_hw(source_hw: tuple[int, int]) -> tuple[int, int]:
    k = min(1.0, GRADE_SIDE / max(source_hw))
    return max(1, round(source_hw[0] * k)), max(1, round(source_hw[1] * k))


def _graded(work_map: torch.Tensor, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(map, mask) on the grading grid: the working map covers the whole source image."""
    hw = grade_hw(mask.shape)
    shrink = hw[0] < work_map.shape[0] or hw[1] < work_map.shape[1]
    m = F.interpolate(work_map[None, None].float(), size=hw, mode="bilinear", align_corners=False,
                      antialias=shrink)[0, 0]
    g = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=hw, mode="nearest")[0, 0]
    return m.numpy(), g.numpy() > 0.5


def _smoothed_maps(detector, loaded: Iterator[Loaded], weights: list, batch_size: int
                   ) -> Iterator[tuple[Loaded, dict]]:
    """(item, {head weight: smoothed working map}); a detector without a gate has the one weight None."""
    if weights == [None]:
        for item, maps in map_views(loaded, detector.view_maps, batch_size):
            yield item, {None: detector.smooth(item.layout.stitch(maps.float().cpu()))}
        return
    for item, features in map_views(loaded, detector.embed, batch_size):
        f = features.float()
        dist, rows = detector.nearest(f) if detector.config.uses_bank else (None, None)  # searched once
        yield item, {w: detector.smooth(item.layout.stitch(
            detector.view_maps_from_search(f, dist, rows, item.layout.view_hw, w))) for w in weights}


def _sources(kinds: list[str]) -> list[str]:
    return [s for s in SOURCES if s in ("perlin", "procedural") or "aras" in kinds]


def _members(kind: str, source: str) -> bool:
    return kind == "normal" or kind == source or (source == "both" and kind in ("aras", "perlin"))


def grid(detector, val: list[Item], seed: int, weights: list, rules: tuple[str, ...], batch_size: int = 8,
         on_item: Callable[[], None] | None = None, foreground=None) -> tuple[list[dict], dict]:
    """Validation metrics of every (source, head weight, image rule, scoring region: the whole image,
    and with a fitted `foreground` the part only); -> (rows, image scores by (weight, rule, region)
    of the normal items, for the threshold)."""
    from .scoring_region import restrict, work_region

    kinds = [v.kind for v in val]
    sources = _sources(kinds)
    regions = [False, True] if foreground is not None else [False]
    n_pixels = sum(int(np.prod(grade_hw(_size(v)))) for v in val)
    pixels = {(w, s, f): M.PixelMetrics(M.streams(n_pixels)) for w in weights for s in sources for f in regions}
    scores = {(w, r, f): [] for w in weights for r in rules for f in regions}
    parts: dict[int, torch.Tensor] = {}  # each item's foreground over its working image
    loaded = (_load(i, v, seed, detector.policy) for i, v in enumerate(val))
    masks: dict[int, np.ndarray] = {}

    def views() -> Iterator[Loaded]:
        for item, mask in loaded:
            masks[item.index] = mask
            if foreground is not None:
                parts[item.index] = work_region(foreground, item.image, item.layout)
            yield item

    with torch.inference_mode():
        for item, maps in _smoothed_maps(detector, views(), weights, batch_size):
            mask = masks.pop(item.index)
            kind = kinds[item.index]
            region = parts.pop(item.index, None)
            for (w, work), f in ((m, f) for m in maps.items() for f in regions):
                work = restrict(work, region) if f else work
                graded = M.ImagePixels(*_graded(work, mask))
                for s in sources:
                    if _members(kind, s):
                        pixels[w, s, f].add(graded)
                for r in rules:
                    scores[w, r, f].append(float(image_score(work, r)))
            if on_item:
                on_item()
    rows = []
    for s in sources:
        pick = [i for i, k in enumerate(kinds) if _members(k, s)]
        labels = [int(kinds[i] != "normal") for i in pick]
        for w, r, f in ((w, r, f) for w in weights for r in rules for f in regions):
            m = summary_metrics([scores[w, r, f][i] for i in pick], labels, pixels[w, s, f])
            rows.append({"source": s, "head_weight": w, "image_rule": r, "foreground": f, "n_images": len(pick),
                         **{k: float(m[k]) for k in REPORTED}, "criterion": _criterion(m)})
    normal = [i for i, k in enumerate(kinds) if k == "normal"]
    return rows, {key: np.asarray([v[i] for i in normal]) for key, v in scores.items()}


def _size(item: Item) -> tuple[int, int]:
    from ..data.io import image_size

    return image_size(item.image)


def _criterion(m: dict) -> float:
    return float(np.mean([m[k] for k in CRITERION]))


def selection_source(rows: list[dict]) -> str:
    present = {r["source"] for r in rows}
    return SELECTION_SOURCE if SELECTION_SOURCE in present else "perlin"


def best(rows: list[dict], source: str) -> dict:
    """The row the gate keeps: highest criterion on `source`; ties to the smaller head weight (the
    bank), then the whole image over the part only, then the earlier rule (the maximum first). NaN
    (one class only) never wins."""
    order = {r: i for i, r in enumerate(IMAGE_RULES)}
    mine = [r for r in rows if r["source"] == source and np.isfinite(r["criterion"])]
    if not mine:
        raise ValueError("the validation split has no defect or no normal image: nothing to choose by")
    return max(mine, key=lambda r: (r["criterion"], -(r["head_weight"] or 0.0), -int(r.get("foreground", False)),
                                    -order.get(r["image_rule"], 0)))


def validate(detector, split: Split, synth_dir: str | Path | None, seed: int, batch_size: int = 8,
             on_item: Callable[[], None] | None = None) -> dict:
    """Validate a fitted detector on the held-out split; a qarad detector with fusion is gated
    (Segmenter.set_gate: its head weight, image rule, scoring region and threshold).
    -> metrics_validation.json's content."""
    start = time.perf_counter()
    val = items(split.held, synth_dir, seed)
    gated = getattr(detector, "method", "") == "qarad"
    weights = list(HEAD_WEIGHTS) if gated and detector.config.fusion else ([detector.head_weight_] if gated
                                                                              else [None])
    rules = IMAGE_RULES if gated else ("max",)
    foreground = _foreground(split.train) if gated else None
    rows, normal_scores = grid(detector, val, seed, weights, rules, batch_size, on_item, foreground)
    source = selection_source(rows)
    chosen = best(rows, source)
    w, rule, part = chosen["head_weight"], chosen["image_rule"], chosen["foreground"]
    if gated:  # the threshold from the held-out normal images, scored as test images will be
        detector.set_gate(w, rule, foreground if part else None, normal_scores[w, rule, part])
    counts = {k: sum(v.kind == k for v in val) for k in ("normal", "aras", "perlin", "procedural")}
    note = _note(gated, detector, w, rows, source, rule) + (_region_note(foreground, part) if gated else "")
    return {"criterion": "mean of image AUROC and AUPRO", "source": source,
            "split": {"share_of_normals": len(split.held) / max(1, len(split.held) + len(split.train)),
                      "normal_train": len(split.train), "normal_held_out": len(split.held),
                      "aras_samples": counts["aras"], "perlin_patches": counts["perlin"],
                      "procedural_defects": counts["procedural"], "seed": seed},
            "chosen": {"head_weight": w, "image_rule": rule, "foreground": part, "criterion": chosen["criterion"],
                       "note": note},
            "overall": {k: chosen[k] for k in REPORTED},
            "by_source": {s: {k: r[k] for k in REPORTED} for s in _sources([v.kind for v in val])
                          for r in rows if r["source"] == s and r["head_weight"] == w and r["image_rule"] == rule
                          and r["foreground"] == part},
            "grid": rows, "seconds": round(time.perf_counter() - start, 2)}


def validate_split(detector, split: Split, synth_dir: str | Path | None, seed: int, batch_size: int = 8
                   ) -> dict | None:
    """`train`'s validation step: `validate` with a progress bar; None when nothing was held out."""
    if not split.held:
        return None
    with bar(len(items(split.held, synth_dir, seed)), "validation split", unit="image") as tick:
        return validate(detector, split, synth_dir, seed, batch_size, on_item=tick)


def _foreground(train: list[Path]):
    """The scoring-region candidate: the foreground of the training normals, or None when they show
    no flat backdrop (the part fills the frame: restricting changes nothing)."""
    from .scoring_region import fit_foreground

    fitted = fit_foreground(train)
    return fitted if fitted.separable_ else None


def _region_note(foreground, part: bool) -> str:
    if foreground is None:
        return "; scoring region: the whole image (no plain backdrop found in the normal images)"
    return ("; scoring region: the part only (the learned foreground helps on validation)" if part else
            "; scoring region: the whole image (restricting it to the learned foreground did not help)")


def _note(gated: bool, detector, w, rows: list[dict], source: str, rule: str) -> str:
    if not gated:
        return "memory bank (PatchCore): validated, nothing to gate"
    if not detector.config.fusion:
        return f"head alone (--no-fusion): nothing to gate; image score {rule}"
    if w == 0.0:
        bank = best([r for r in rows if r["head_weight"] == 0.0], source)["criterion"]
        head = max((r["criterion"] for r in rows if r["source"] == source and r["head_weight"] != 0.0
                    and np.isfinite(r["criterion"])), default=float("nan"))
        return (f"the head does not help on validation ({head:.3f} at best vs the bank's {bank:.3f}): "
                f"scoring with the memory bank alone (head weight 0); image score {rule}")
    return f"head weight {w:g} against the memory bank; image score {rule}"
