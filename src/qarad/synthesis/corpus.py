"""The ARAS fitting corpus: procedural renders on windows of the normal images (defects/corpus.py
draws them), and real defect shots re-placed on other normal windows, each cut around its mask by
the window rule; stored in MODEL/corpus.{json,safetensors} so a resumed fit does not re-render.

Real defect shots (ModelConfig.real_defects, DESIGN.md 4.1) join the corpus after the procedural
renders: each shot becomes `real_samples_per_shot` samples, a quarter of them the shot in its own
image and the rest its defect re-placed on other normal images inside its own mask shape
(defects/transplant.py), each zoomed by the window rule and flipped or turned; their prompt is the
type's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import checkpoint
from ..data.io import read_image, read_mask
from ..data.resolution import ResolutionPolicy
from ..data.real_defects import RealDefects
from ..defects.corpus import CorpusConfig, make_sample
from ..defects.masks import foreground_mask
from ..defects.prompts import family_of
from ..defects.renderer import FAMILIES
from ..defects.transplant import PasteConfig, background, cut, place, transform
from .model import FitConfig
from .window import WindowRule, coverage, to_window

IN_PLACE_EVERY = 4  # every 4th corpus sample of a real shot is the shot in its own image
REAL_TARGETS = 32  # normal images (at most) that the real shots are re-placed on, loaded once


@dataclass
class Corpus:
    clean: torch.Tensor  # (N, S, S, 3) uint8
    defect: torch.Tensor  # (N, S, S, 3) uint8
    mask: torch.Tensor  # (N, S, S) uint8 0/1
    prompts: list[str]
    families: list[str]  # the procedural family, or for a real shot's sample its defect type
    n_real: int = 0  # the last n_real samples are real shots' (build_real_corpus)

    def images(self, idx: torch.Tensor, which: str) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1]."""
        return getattr(self, which)[idx].permute(0, 3, 1, 2).float() / 255.0

    def __add__(self, other: "Corpus") -> "Corpus":
        """This corpus with `other`'s samples after it (`other` may hold real ones, this one none)."""
        if self.n_real:
            raise ValueError("real samples must come last: append to a corpus without real samples")
        return Corpus(*(torch.cat([getattr(self, k), getattr(other, k)]) for k in ("clean", "defect", "mask")),
                      self.prompts + other.prompts, self.families + other.families, other.n_real)


def _uint8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def zoom_to_mask(clean: np.ndarray, defect: np.ndarray, mask: np.ndarray, rule: WindowRule
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-cut a rendered crop (working px) around its mask by `rule`, inside the crop, resized to
    the window: the view synthesis will have of a mask of that size. An empty mask keeps the crop."""
    if not mask.any():
        return clean, defect, mask
    y0, x0, y1, x1 = rule.box(mask, (1.0, 1.0), limit=True)

    def cut(image: np.ndarray) -> np.ndarray:
        crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)
        return to_window(crop, rule.side).permute(1, 2, 0).numpy()

    region = coverage(torch.from_numpy(mask[y0:y1, x0:x1]), rule.side) > 0.5
    return cut(clean), cut(defect), region.numpy()


def _work(path: str | Path, policy: ResolutionPolicy) -> np.ndarray:
    """An image at working resolution, (H, W, 3) float."""
    image = read_image(path)
    return policy.layout(*image.shape[:2]).to_work(image).permute(1, 2, 0).numpy()


def build_corpus(paths: list[Path], policy: ResolutionPolicy, cfg: FitConfig,
                 on_sample: Callable[[], None] | None = None) -> Corpus:
    """Render `corpus_size` defects on windows of the normal images, a few per image, streaming,
    each re-cut around its mask by the model's window rule."""
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(paths))[: cfg.corpus_size]
    per_image = math.ceil(cfg.corpus_size / len(order))
    ccfg = CorpusConfig(window=cfg.window, seed=cfg.seed)
    clean, defect, mask, prompts, families = [], [], [], [], []
    for i in order:
        work = _work(paths[i], policy)
        for _ in range(min(per_image, cfg.corpus_size - len(prompts))):
            s = make_sample(work, rng, ccfg)
            c, d, m = zoom_to_mask(s.clean, s.defect, s.mask, cfg.window_rule)
            clean.append(_uint8(c))
            defect.append(_uint8(d))
            mask.append(torch.from_numpy(m.astype(np.uint8)))
            prompts.append(s.prompt)
            families.append(s.params.family)
            if on_sample:
                on_sample()
    return Corpus(torch.stack(clean), torch.stack(defect), torch.stack(mask), prompts, families)


def _dihedral(arrays: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The same random flip and quarter turn of every (S, S[, 3]) array."""
    flip, k = rng.random() < 0.5, int(rng.integers(4))
    return tuple(np.ascontiguousarray(np.rot90(a[:, ::-1] if flip else a, k)) for a in arrays)


def build_real_corpus(real: RealDefects, paths: list[Path], policy: ResolutionPolicy, cfg: FitConfig,
                      on_sample: Callable[[], None] | None = None) -> Corpus:
    """`real_samples_per_shot` samples of every real shot at working resolution: every
    IN_PLACE_EVERY-th the shot in its own image (its clean window the image with the defect filled
    in from around it), the others its defect re-placed on one of REAL_TARGETS normal images with
    `transplant`'s augmentations; each cut around its mask by the window rule and flipped or turned."""
    rng = np.random.default_rng([cfg.seed, 11])
    targets = [_work(paths[i], policy) for i in sorted(rng.permutation(len(paths))[:REAL_TARGETS])]
    foregrounds = [foreground_mask(t) for t in targets]
    paste = PasteConfig()
    clean, defect, mask, prompts, families = [], [], [], [], []
    for i, shot in enumerate(real.defects):
        image = read_image(shot.image)
        layout = policy.layout(*image.shape[:2])
        work = layout.to_work(image).permute(1, 2, 0).numpy()
        shot_mask = layout.mask_to_work(read_mask(shot.mask, image.shape[:2]))
        if not shot_mask.any():  # too small to survive the working resolution: keep its centre pixel
            ys, xs = np.nonzero(read_mask(shot.mask, image.shape[:2]))
            shot_mask[int(ys.mean() * work.shape[0] / image.shape[0]),
                      int(xs.mean() * work.shape[1] / image.shape[1])] = True
        patch = cut(work, shot_mask)
        for j in range(cfg.real_samples_per_shot):
            r = np.random.default_rng([cfg.seed, 12, i, j])
            if j % IN_PLACE_EVERY == 0:
                c, d, m = background(work, shot_mask), work, shot_mask
            else:
                k = int(r.integers(len(targets)))
                placed = place(targets[k], transform(patch, r, paste), r, "difference", foregrounds[k], paste)
                c, d, m = targets[k], placed.image, placed.mask
            c, d, m = zoom_to_mask(c, d, m, cfg.window_rule)
            c, d, m = _dihedral((c, d, m), r)
            clean.append(_uint8(c))
            defect.append(_uint8(d))
            mask.append(torch.from_numpy(m.astype(np.uint8)))
            prompts.append(shot.prompt)
            families.append(shot.defect_type)
            if on_sample:
                on_sample()
    return Corpus(torch.stack(clean), torch.stack(defect), torch.stack(mask), prompts, families, len(prompts))


def family_labels(corpus: Corpus) -> torch.Tensor:
    """(N,) positive-pair labels of the QAW dual encoder: a procedural render's family index; a real
    shot's sample gets the family its prompt names ("crack") when it names one, and otherwise a label
    of its own type after the families (a prompt like "blowhole" is nothing the grammar knows)."""
    first = len(corpus.prompts) - corpus.n_real
    own = {t: len(FAMILIES) + k for k, t in enumerate(sorted(set(corpus.families[first:])))}
    labels = [FAMILIES.index(f) for f in corpus.families[:first]]
    for prompt, t in zip(corpus.prompts[first:], corpus.families[first:]):
        named = family_of(prompt)
        labels.append(FAMILIES.index(named) if named in FAMILIES else own[t])
    return torch.tensor(labels)


def save_corpus(stem: Path, corpus: Corpus) -> None:
    meta = {"prompts": corpus.prompts, "families": corpus.families}
    if corpus.n_real:  # a corpus without real samples is written as before they existed
        meta["n_real"] = corpus.n_real
    checkpoint.save(stem, {"clean": corpus.clean, "defect": corpus.defect, "mask": corpus.mask}, meta)


def load_corpus(stem: Path) -> Corpus:
    meta = checkpoint.load_config(stem)
    t = checkpoint.load_tensors(stem, {"clean": (None, None, None, 3), "defect": (None, None, None, 3),
                                       "mask": (None, None, None)})
    return Corpus(t["clean"], t["defect"], t["mask"], meta["prompts"], meta["families"], int(meta.get("n_real", 0)))
