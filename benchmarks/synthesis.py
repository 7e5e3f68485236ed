"""ARAS against the procedural and Perlin-texture baselines, on one dataset of ../shared/data.

    python benchmarks/synthesis.py --model MODEL_DIR [--dataset magnetic_tile/magnetic_tile]

MODEL_DIR is a fitted ARAS model (`qarad fit`). Measured, side by side in one process:
* speed: ARAS.synthesize end to end (cached sampler, masked tokens only) vs the same pipeline
  with `naive_resample` (whole token grid, one uncached forward pass per code), samples / s;
* language control: a logistic-regression family classifier trained on procedural renders, cut
  by the model's window rule as its fitting corpus is (region_pool of backbone features of the
  window upsampled to CLASSIFIER_SIDE), labels the region ARAS changed for prompts of each
  family. Two ceilings are reported with it: the
  classifier on held-out renders, and on the same renders after tokenizer encode/decode;
* realism: KID (cubic polynomial kernel, Binkowski et al. 2018) between real defect regions of
  the test split and each method's synthetic regions, on region_pool features (304-d:
  mean feature inside the region and inside minus a 2-cell ring around it). The global mean of
  the crop is left out on purpose: it mostly describes the normal material, not the defect;
* seams: Sobel gradient on a 1-px ring around the changed mask, output / input (1 = no added edge);
* continuous control: along mix 0 -> 1 (`qarad synth --prompt-b B --mix F`) between prompts of
  two families, the language-control classifier's probability of the second family, per pair
  (MIX_PAIRS) and as Spearman's rho over every sample (`control_curves.mix_spearman`); along
  `--strength` 0 -> 1 the mean absolute change inside the mask (`control_curves.strength_spearman`,
  `control.strength_monotonic`). `--only control` measures this part alone and merges it into
  an existing --out-json, keeping its other keys.
Writes benchmarks/results/synthesis.json, benchmarks/results/gallery.png, the mix and strength
strips (synthesis_mix_strip.png, synthesis_strength_strip.png) and a BENCHMARKS.md section.
The realism and seam measures of the two baselines alone, without a model: benchmarks/renderer_realism.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import ndimage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from synthesis_judge import CLASSIFIER_SIDE, FamilyJudge, View, attribute_control, judge_features  # noqa: E402

KID_SUBSETS, KID_SUBSET_MAX = 10, 100
SEAM_EPS = 1e-3  # added to both ring means: flat (binary) material has zero gradient
HOLDOUT = 0.25  # share of the procedural renders held out to check the classifier itself
# The family classifier looks at windows upsampled to the backbone's ImageNet input side
# (synthesis_judge.CLASSIFIER_SIDE): at the model's 64 px its stride-8 grid is 8x8 and thin defects
# sit far below the scale it was trained at (held-out top-1 on procedural renders, magnetic tile:
# 0.43 at 64 px, 0.65 at 160, 0.76 at 224).
PART = {}  # "foreground": the part's foreground learned from the dataset's normal train images


# ---- data --------------------------------------------------------------------------------
@lru_cache(maxsize=128)
def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The image and its part (the foreground learned from the train images, `learn_part`)."""
    from qarad.data.io import read_image

    image = read_image(path)
    return image, PART["foreground"].mask(image)


def learn_part(train: list[str]) -> dict:
    """Fit the foreground (data/foreground.py) on the normal train images, as `qarad synth --auto-masks`
    does on the images it is given; -> whether a plain backdrop was found."""
    from qarad.data.foreground import Foreground
    from qarad.data.io import read_image

    chosen = train[:: max(1, len(train) // Foreground().config.max_images)]
    PART["foreground"] = Foreground().fit(read_image(p) for p in chosen)
    return {"backdrop_found": PART["foreground"].separable_}


def foreground_check(defects, n: int, seed: int) -> dict:
    """On test images with real defects: the share of each image the learned foreground keeps, and
    the share of real defect pixels inside it (a defect is on the part, so this is the part's
    recall where it matters), beside the per-image split it replaces (masks.foreground_mask)."""
    from qarad.data.io import read_image, read_mask
    from qarad.defects.masks import foreground_mask

    order = np.random.default_rng([seed, 10]).permutation(len(defects))[:n]
    cover, inside, old_cover, old_inside = [], [], [], []
    for i in order:
        image = read_image(defects[i].image)
        mask = read_mask(defects[i].mask, image.shape[:2])
        if not mask.any():
            continue
        learned, otsu = PART["foreground"].mask(image), foreground_mask(image)
        for fg, c, s in ((learned, cover, inside), (otsu, old_cover, old_inside)):
            c.append(float(fg.mean()))
            s.append(float((fg & mask).sum() / mask.sum()))
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"foreground_cover": mean(cover), "defect_pixels_inside": mean(inside),
            "otsu_cover": mean(old_cover), "otsu_defect_pixels_inside": mean(old_inside), "n_images": len(cover)}


def cut(image: np.ndarray, mask: np.ndarray, policy, rule) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's window around `mask` (3, S, S) and the mask's coverage of it (S, S) in [0, 1]."""
    from qarad.synthesis.window import crop_window

    return crop_window(image, mask, policy, rule)


def features(embedder, windows: list[torch.Tensor], covers: list[torch.Tensor], batch: int = 16,
             side: int | None = None) -> torch.Tensor:
    """(n, 304) region_pool features: [inside, inside - ring] of the stride-8 patch embedding,
    of the windows as they are or upsampled to `side` px."""
    from qarad.quality.dual_encoder import region_pool

    out = []
    with torch.inference_mode():
        for s in range(0, len(windows), batch):
            w, m = torch.stack(windows[s:s + batch]), torch.stack(covers[s:s + batch])
            if side and side != w.shape[-1]:
                w = F.interpolate(w, size=(side, side), mode="bilinear", align_corners=False)
            out.append(region_pool(embedder(w), m))
    return torch.cat(out).double() if out else torch.zeros(0, 304, dtype=torch.float64)


def draw_prompt(rng: np.random.Generator, image: np.ndarray, family: str | None = None):
    """Defect params and prompt for `image`, drawn as the procedural renderer draws them (no hue
    on a monochrome image)."""
    from qarad.defects.prompts import prompt_for
    from qarad.defects.renderer import is_monochrome, sample_params

    params = sample_params(rng, family, coloured=not is_monochrome(image))
    return params, prompt_for(params)


def family_mask(rng, image_fg: tuple[np.ndarray, np.ndarray], params) -> np.ndarray:
    from qarad.defects.masks import FAMILY_MASK_KIND, FAMILY_MASK_SCALE, propose_mask

    image, fg = image_fg
    return propose_mask(rng, image.shape[:2], fg, kind=FAMILY_MASK_KIND[params.family],
                        scale=FAMILY_MASK_SCALE.get(params.family, 1.0), angle=params.angle)


# ---- 1. speed ----------------------------------------------------------------------------
def naive_sampler(prior, codes, token_mask, text, config, generator, text_b=None, mix=0.0):
    """Drop-in for pipeline.sample_masked: the reference slow path, whole grid, no cache, no gate."""
    from qarad.synthesis.aras import naive_resample

    return naive_resample(prior, codes, text, config, generator)


def speed(aras, goods: list[str], n_speed: int, n_naive: int, seed: int, sampler=None) -> dict:
    from qarad.defects.masks import propose_mask
    from qarad.synthesis import pipeline

    rng = np.random.default_rng([seed, 1])
    jobs = []
    for i in range(n_speed + 1):  # job 0 is the warm-up
        image, fg = load(goods[i % len(goods)])
        mask, prompt = propose_mask(rng, image.shape[:2], fg), draw_prompt(rng, image)[1]
        jobs.append((image, mask, prompt, int(rng.integers(2**31)), *([sampler] if sampler is not None else [])))
    aras.synthesize(*jobs[0])
    t0, steps = time.perf_counter(), []
    for job in tqdm(jobs[1:], desc="speed: ARAS", unit="sample"):
        steps.append(aras.synthesize(*job).steps)
    aras_s = (time.perf_counter() - t0) / n_speed
    out = {"aras_per_s": 1 / aras_s, "aras_s_per_sample": aras_s, "mean_masked_tokens": float(np.mean(steps)),
           "n_speed": n_speed}
    if not n_naive:  # ARAS alone
        return out
    grid = aras.prior.config.grid
    t0 = time.perf_counter()
    with mock.patch.object(pipeline, "sample_masked", naive_sampler):
        for job in tqdm(jobs[1:n_naive + 1], desc="speed: naive", unit="sample"):
            if aras.synthesize(*job).steps != grid * grid:
                raise RuntimeError("the naive sampler was not used: pipeline no longer calls sample_masked")
    naive_s = (time.perf_counter() - t0) / n_naive
    return {**out, "naive_per_s": 1 / naive_s, "speedup": naive_s / aras_s, "naive_s_per_sample": naive_s,
            "naive_tokens": grid * grid, "n_naive": n_naive}


def cli_speed(model: Path, goods: list[str], n: int, workers: tuple[int, ...] = (1, 2)) -> dict:
    """`qarad synth` samples / s as a user runs it (process start and model load included), with 1 and
    with 2 worker processes over the same n samples, one after the other."""
    import subprocess
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in workers:
            cmd = [sys.executable, "-m", "qarad.cli", "synth", str(model), "--images", *goods[:n], "--prompts",
                   "a thin dark scratch", "a small round hole", "a large dark stain", "--auto-masks", "--n", str(n),
                   "--out", str(Path(tmp) / f"w{w}"), "--workers", str(w)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[f"workers_{w}"] = n / (time.perf_counter() - t0)
    return out


# ---- 2. language control -----------------------------------------------------------------
def through_tokenizer(aras, render: "Render", refine: bool) -> torch.Tensor:
    """The window with its defect region replaced by the tokenizer's encode/decode of it, passed
    through the model's refiner with the render's clean window and prompt when `refine`: the most
    of the defect any sampler over these codes can reproduce (outside the region: the input). A
    source-conditioned tokenizer gets the clean window as its source, and the clean window's own
    codes outside the tokens synthesis would re-sample."""
    from qarad.synthesis.aras import SamplerConfig, token_mask_from_pixels

    edit = token_mask_from_pixels(render.cover > 0, 8, SamplerConfig().dilate_px)[None]
    with torch.inference_mode():
        recon = aras.tokenizer(render.window[None], render.clean[None], edit).recon
        if refine:
            recon = aras.refiner(recon, render.clean[None], render.cover[None], aras.text.encode([render.prompt]))
    return torch.where(render.cover[None] > 0, recon[0].clamp(0, 1), render.window)


@dataclass
class Render:
    window: torch.Tensor  # (3, S, S) with the defect
    clean: torch.Tensor  # (3, S, S) the same window before it
    cover: torch.Tensor  # (S, S) the defect's coverage
    prompt: str


def procedural_renders(train: list[str], policy, rule, n_per_family: int, seed: int):
    """Procedural renders on working-resolution windows of normal train images, each re-cut around
    its mask by the model's window rule, as the fitting corpus is -> (renders, labels)."""
    from qarad.data.io import read_image
    from qarad.defects.corpus import CorpusConfig, make_sample
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.corpus import zoom_to_mask

    config, renders, labels = CorpusConfig(window=rule.side), [], []
    for i in tqdm(range(n_per_family * len(FAMILIES)), desc="language: procedural renders", unit="render"):
        image = read_image(train[i % len(train)])
        work = policy.layout(*image.shape[:2]).to_work(image).permute(1, 2, 0).numpy()
        s = make_sample(work, np.random.default_rng([seed, 2, i]), config, family=FAMILIES[i % len(FAMILIES)])
        if s.mask.any():  # a render that changed nothing has no region to describe
            clean, defect, region = zoom_to_mask(s.clean, s.defect, s.mask, rule)
            renders.append(Render(torch.from_numpy(defect).permute(2, 0, 1), torch.from_numpy(clean).permute(2, 0, 1),
                                  torch.from_numpy(region).float(), s.prompt))
            labels.append(i % len(FAMILIES))
    return renders, torch.tensor(labels)


def view_of(aras, source: np.ndarray, out) -> View:
    """The judge's view of a synthesis: the window around what it changed, before and after."""
    before, cover = cut(source, out.mask, aras.policy, aras.rule)
    return View(before, cut(out.image, out.mask, aras.policy, aras.rule)[0], cover)


def aras_predictions(aras, embedder, predict, goods, args, sampler, gallery: list):
    """ARAS samples for n_per_family prompts of every family, classified -> (truth, predicted,
    unchanged count); the first changed sample of each family goes to `gallery`."""
    from qarad.defects.vocab import FAMILIES

    rng = np.random.default_rng([args.seed, 4])
    truth, pred, unchanged, k, seen = [], [], 0, 0, set()
    bar = tqdm(total=len(FAMILIES) * args.n_per_family, desc="language: ARAS", unit="sample")
    for f, family in enumerate(FAMILIES):
        for _ in range(args.n_per_family):
            src = load(goods[k % len(goods)])
            k += 1
            params, prompt = draw_prompt(rng, src[0], family)
            mask = family_mask(rng, src, params)
            out = aras.synthesize(src[0], mask, prompt, int(rng.integers(2**31)), sampler)
            bar.update()
            truth.append(f)
            if not out.mask.any():
                unchanged += 1
                pred.append(-1)  # nothing changed: counts as a miss
                continue
            pred.append(int(predict(judge_features(embedder, [view_of(aras, src[0], out)]))[0]))
            if family not in seen:
                seen.add(family)
                gallery.append((f"ARAS {sampler.composite}", src[0], out.image, mask, prompt))
    bar.close()
    return np.array(truth), np.array(pred), unchanged


@dataclass
class FamilyClassifier:
    renders: list[Render]
    labels: torch.Tensor  # (n,) family index of each render
    x: np.ndarray  # (n, d) their judge features (synthesis_judge.judge_features)
    held: np.ndarray  # (n,) bool: held out from training
    predict: FamilyJudge  # features -> family index; .proba: -> family probabilities

    @property
    def holdout_top1(self) -> float:
        return float((self.predict(self.x[self.held]) == self.labels[self.held]).double().mean())


def family_classifier(embedder, train: list[str], policy, rule, n_render: int, seed: int) -> FamilyClassifier:
    """The language-control judge: scikit-learn logistic regression (synthesis_judge.FamilyJudge) on
    procedural renders cut by `rule`, HOLDOUT of them held out."""
    renders, labels = procedural_renders(train, policy, rule, n_render, seed)
    x = judge_features(embedder, [View(r.clean, r.window, r.cover) for r in renders])
    held = np.random.default_rng([seed, 3]).random(len(labels)) < HOLDOUT
    return FamilyClassifier(renders, labels, x, held, FamilyJudge(seed).fit(x[~held], labels.numpy()[~held]))


def language_control(aras, embedder, goods, judge: FamilyClassifier, args, gallery: list, sampler=None,
                     ceilings: bool = True) -> dict:
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.aras import SamplerConfig

    sampler = sampler or SamplerConfig()
    renders, labels, held, predict = judge.renders, judge.labels, judge.held, judge.predict
    idx = np.nonzero(held)[0].tolist()

    def ceiling(refine: bool) -> float:
        recon = judge_features(embedder, [View(renders[i].clean, through_tokenizer(aras, renders[i], refine),
                                               renders[i].cover) for i in idx])
        return float((predict(recon) == labels[held]).double().mean())

    tokenizer_top1 = ceiling(refine=False) if ceilings else None
    refined_top1 = ceiling(refine=True) if aras.refiner is not None and ceilings else None
    truth, pred, unchanged = aras_predictions(aras, embedder, predict, goods, args, sampler, gallery)
    # the same prompts, masks and seeds (hence codes) without the refiner: what it adds, side by side
    unrefined = None
    if aras.refiner is not None:
        unrefined = float((aras_predictions(aras, embedder, predict, goods, args,
                                            replace(sampler, refine=False), [])[1] == truth).mean())
    per_family = {fam: float((pred[truth == i] == i).mean()) for i, fam in enumerate(FAMILIES)}
    confusion = [[int(((truth == i) & (pred == j)).sum()) for j in range(len(FAMILIES))] for i in range(len(FAMILIES))]
    top1 = float((pred == truth).mean())
    return {"language_control_top1": top1, "language_control_top1_unrefined": unrefined,
            "judge_ceiling_top1": judge.holdout_top1, "family_control_of_ceiling": top1 / judge.holdout_top1,
            "language_control_types": list(FAMILIES),
            "language_control_chance": 1 / len(FAMILIES), "language_control_per_family": per_family,
            "language_control_confusion": confusion, "language_control_unchanged": unchanged,
            "n_per_family": args.n_per_family, "classifier_holdout_top1": judge.holdout_top1,
            "classifier_side_px": CLASSIFIER_SIDE, "tokenizer_ceiling_top1": tokenizer_top1,
            "refiner_ceiling_top1": refined_top1,
            "classifier_n_train": int((~held).sum()), "classifier_n_holdout": int(held.sum())}


# ---- 3./4. realism and seams -------------------------------------------------------------
def kid(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[float, float, int]:
    """Unbiased MMD^2, kernel (x.y/d + 1)^3, over KID_SUBSETS random subsets -> (mean, std, subset size).

    Callers divide the features by one constant first (see `realism`). When both sets hold
    <= 100 samples every subset is the whole set and the std is 0.
    """
    m = min(KID_SUBSET_MAX, len(x), len(y))
    if m < 2:
        return float("nan"), float("nan"), m
    d, values = x.shape[1], []
    for _ in range(KID_SUBSETS):
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off - 2 * kxy.mean()))
    return float(np.mean(values)), float(np.std(values)), m


def seam(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel magnitude of the output over the input, on pixels within 1 px of the mask's boundary."""
    square = np.ones((3, 3), bool)
    ring = ndimage.binary_dilation(mask, square) ^ ndimage.binary_erosion(mask, square)

    def grad(img):
        g = img.mean(axis=2).astype(np.float64)
        return np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1))[ring].mean()

    return float((grad(after) + SEAM_EPS) / (grad(before) + SEAM_EPS))


def real_features(embedder, defects, n: int, seed: int, policy, rule) -> torch.Tensor:
    from qarad.data.io import read_image, read_mask

    order = np.random.default_rng([seed, 5]).permutation(len(defects))
    wins, covers = [], []
    for i in tqdm(order, desc="realism: real defects", unit="image"):
        if len(wins) >= n:
            break
        image = read_image(defects[i].image)
        mask = read_mask(defects[i].mask, image.shape[:2])
        if mask.any():
            win, cover = cut(image, mask, policy, rule)
            wins.append(win)
            covers.append(cover)
    return features(embedder, wins, covers)


def synthetic_sets(goods, n: int, seed: int, gallery: list, policy, rule, aras=None, samplers=None):
    """n samples per method on the same source images, ARAS only when `aras` is given (one method
    per entry of `samplers`, name -> SamplerConfig, same codes: the composites differ after them). ARAS and
    procedural share the family, the proposed mask and the defect parameters: `procedural` draws
    params then mask from its rng, and an identically seeded rng replays those draws for ARAS.
    Perlin draws its own noise mask. -> ({method: [(window, cover, seam) per sample whose change
    is not empty]}, empty counts, {method: seconds spent synthesizing})."""
    from qarad.defects.baselines import perlin_texture, procedural

    from qarad.synthesis.aras import SamplerConfig

    samplers = ({"aras": SamplerConfig()} if samplers is None else samplers) if aras is not None else {}
    names = (*samplers, "procedural", "perlin")
    made, empty, seconds = ({k: [] for k in names}, {k: 0 for k in names}, {k: 0.0 for k in names})
    for i in tqdm(range(n), desc="realism: synthesize", unit="sample"):
        image, fg = src = load(goods[i % len(goods)])
        key = [seed, 6, i]
        t0 = time.perf_counter()
        results = {"procedural": procedural(image, np.random.default_rng(key), foreground=fg)}
        t1 = time.perf_counter()
        results["perlin"] = perlin_texture(image, np.random.default_rng(key + [2]), foreground=fg)
        seconds["procedural"] += t1 - t0
        seconds["perlin"] += time.perf_counter() - t1
        if aras is not None:
            replay = np.random.default_rng(key)
            params, prompt = draw_prompt(replay, image)
            mask = family_mask(replay, src, params)
            if (results["procedural"].mask & ~mask).any():
                raise RuntimeError("procedural no longer draws params then mask first: masks are not shared")
            sample_seed = int(np.random.default_rng(key + [1]).integers(2**31))
            for name, sampler in samplers.items():
                t0 = time.perf_counter()
                results[name] = aras.synthesize(image, mask, prompt, sample_seed, sampler)
                seconds[name] += time.perf_counter() - t0
        for name in names:
            res = results[name]
            if res.mask.any():  # keep only the window: whole images of 3 x n samples add up
                win, cover = cut(res.image, res.mask, policy, rule)
                made[name].append((win, cover, seam(image, res.image, res.mask)))
            else:
                empty[name] += 1
        for name in ("procedural", "perlin"):
            res = results[name]
            if sum(g[0] == name for g in gallery) < 3 and res.mask.any():
                gallery.append((name, image, res.image, res.mask, res.prompt))
    return made, empty, seconds


def realism(embedder, goods, defects, args, gallery: list, policy, rule, aras=None, samplers=None) -> dict:
    """KID and seams of each method (ARAS only when `aras` is given, once per entry of `samplers`)
    against `args.n_kid` real defect regions, all cut by `policy` and `rule`."""
    real = real_features(embedder, defects, args.n_kid, args.seed, policy, rule)
    made, empty, seconds = synthetic_sets(goods, args.n_kid, args.seed, gallery, policy, rule, aras, samplers)
    rng = np.random.default_rng([args.seed, 7])
    # each draws its own KID subsets: the same numbers without ARAS (the default sampler is "aras")
    methods = ("aras", "procedural", "perlin", *sorted(set(made) - {"aras", "procedural", "perlin"}))
    # One constant for every set: raw features have x.x/d ~ 13, where the cubic kernel mostly
    # compares norms; in units of the real features' RMS entry, x.x/d ~ 1 as with Inception features.
    unit = float((real * real).mean().sqrt()) if len(real) else 1.0
    real = real / unit
    out = {"kid": {}, "kid_std": {}, "seam": {}, "n_kid": {"real": len(real)}, "n_empty_change": empty,
           "kid_real_halves": kid(real[0::2], real[1::2], rng)[0],  # floor: real vs real
           "synthesis_s_per_sample": {k: v / args.n_kid for k, v in seconds.items()}}
    for name, kept in made.items():
        x = features(embedder, [k[0] for k in kept], [k[1] for k in kept]) / unit
        subsets = np.random.default_rng([args.seed, 7, 1 + methods.index(name)])
        out["kid"][name], out["kid_std"][name], out["kid_subset_size"] = kid(real, x, subsets)
        out["seam"][name] = float(np.median([k[2] for k in kept])) if kept else float("nan")
        out["n_kid"][name] = len(kept)
    out["kid_feature"] = ("region_pool (304-d: inside mean, inside - ring mean) of stride-8 patch features, "
                          f"divided by the real set's RMS entry ({unit:.3f})")
    return out


# ---- 5. continuous control -----------------------------------------------------------------
# Family pairs of the mix curve (first -> second), chosen from the family classifier alone, before
# any sample of this measurement was drawn (magnetic tile, its 176 held-out procedural renders): the
# second families are the four it recognises best (break 16/16, hole 15/16, dent 11/13,
# discoloration 16/19), each paired with a first family that it never confuses with it either way
# (0 held-out confusions), eight different families in all.
MIX_PAIRS = (("scratch", "hole"), ("crack", "break"), ("stain", "discoloration"), ("fray", "dent"))
MIX_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTH_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
STRIP_ROWS = 3  # rows of the strength strip


def region_probabilities(aras, embedder, judge: FamilyClassifier, source: np.ndarray, outs: list) -> np.ndarray:
    """(len(outs), families) classifier probabilities of the region each synthesis of `source`
    changed; rows of NaN where it changed nothing."""
    probs = np.full((len(outs), judge.predict.n_classes), np.nan)
    changed = [i for i, out in enumerate(outs) if out.mask.any()]
    if changed:
        x = judge_features(embedder, [view_of(aras, source, outs[i]) for i in changed])
        probs[changed] = judge.predict.proba(x).numpy()
    return probs


def pair_confusions(judge: FamilyClassifier, a: int, b: int) -> dict:
    """The classifier on the held-out procedural renders of a and b: how many of each it recognises,
    and how many of either it takes for the other (what MIX_PAIRS was chosen by)."""
    pred, y = judge.predict(judge.x[judge.held]), judge.labels[judge.held]
    count = lambda t, p: int(((y == t) & (pred == p)).sum())  # noqa: E731
    return {"recognised_first": [count(a, a), int((y == a).sum())],
            "recognised_second": [count(b, b), int((y == b).sum())], "confused_either_way": count(a, b) + count(b, a)}


def pair_separation(judge: FamilyClassifier, a: int, b: int) -> float:
    """Share of the held-out procedural renders of families a and b that the classifier gives a
    higher probability for their own family of the two than for the other."""
    held = judge.held & ((judge.labels.numpy() == a) | (judge.labels.numpy() == b))
    p, y = judge.predict.proba(judge.x[held]), judge.labels[held]
    own = torch.where(y == a, p[:, a] > p[:, b], p[:, b] > p[:, a])
    return float(own.double().mean())


def spearman(x, y) -> tuple[float, float]:
    """Spearman's rho and its p-value over the finite pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    rho, p = spearmanr(x[keep], y[keep])
    return float(rho), float(p)


def column_means(a: np.ndarray) -> np.ndarray:
    """(rows, columns) -> (columns,) means over each column's finite entries (NaN where none is)."""
    finite = np.isfinite(a)
    return np.where(finite.any(0), np.where(finite, a, 0).sum(0) / np.maximum(finite.sum(0), 1), np.nan)


def listed(a) -> list:
    """Floats for JSON, None for NaN."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, float).ravel()]


def mix_curves(aras, embedder, judge: FamilyClassifier, goods, args, strips: list) -> dict:
    """Along mix 0 -> 1 from a prompt of family a to one of family b, per pair: the classifier's
    P(b) of the changed region, for n_mix sources and masks, each drawn with one seed at every mix
    (so the mix is all that differs along a row). Masks alternate between a's and b's kind."""
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.aras import SamplerConfig

    rng = np.random.default_rng([args.seed, 8])
    pairs, x_all, y_all = {}, [], []
    bar = tqdm(total=len(MIX_PAIRS) * args.n_mix * len(MIX_VALUES), desc="control: mix", unit="sample")
    for p, (fa, fb) in enumerate(MIX_PAIRS):
        a, b = FAMILIES.index(fa), FAMILIES.index(fb)
        p_a, p_b = np.full((args.n_mix, len(MIX_VALUES)), np.nan), np.full((args.n_mix, len(MIX_VALUES)), np.nan)
        for i in range(args.n_mix):
            src = load(goods[(p * args.n_mix + i) % len(goods)])
            params_a, prompt_a = draw_prompt(rng, src[0], fa)
            params_b, prompt_b = draw_prompt(rng, src[0], fb)
            mask = family_mask(rng, src, params_a if i % 2 == 0 else params_b)
            seed = int(rng.integers(2**31))
            outs = [aras.synthesize(src[0], mask, prompt_a, seed, SamplerConfig(), prompt_b=prompt_b, mix=m)
                    for m in MIX_VALUES]
            bar.update(len(MIX_VALUES))
            probs = region_probabilities(aras, embedder, judge, src[0], outs)
            p_a[i], p_b[i] = probs[:, a], probs[:, b]
            if i < 2:  # one row with a's mask kind, one with b's
                captions = [f"mix {m:.2f}\nP({fb}) {q:.2f}" for m, q in zip(MIX_VALUES, p_b[i])]
                title = (f"{fa} -> {fb} ({fa if i % 2 == 0 else fb} mask): "
                         f"\u201c{prompt_a}\u201d -> \u201c{prompt_b}\u201d")
                strips.append((title, src[0], mask, [(o.image, text) for o, text in zip(outs, captions)]))
        mixes = np.broadcast_to(np.array(MIX_VALUES), p_b.shape)
        x_all.append(mixes)
        y_all.append(p_b)
        means = column_means(p_b)
        pairs[f"{fa}->{fb}"] = {
            "p_second": listed(means), "p_first": listed(column_means(p_a)),
            "two_way_second": listed(column_means(p_b / (p_a + p_b))),
            "spearman": spearman(mixes, p_b)[0], "spearman_of_means": spearman(MIX_VALUES, means)[0],
            "classifier_pair_separation": pair_separation(judge, a, b),
            "classifier_holdout": pair_confusions(judge, a, b),
            "n_unchanged": int(np.isnan(p_b).sum()), "raw_p_second": [listed(r) for r in p_b],
            "raw_p_first": [listed(r) for r in p_a]}
    bar.close()
    pooled = spearman(np.concatenate(x_all), np.concatenate(y_all))
    of_means = spearman(np.tile(MIX_VALUES, len(pairs)),
                        [np.nan if v is None else v for c in pairs.values() for v in c["p_second"]])
    return {"mix_spearman": pooled[0], "mix_spearman_p": pooled[1], "mix_spearman_of_means": of_means[0],
            "mix_spearman_of_means_p": of_means[1], "mix_pairs": pairs, "mix_values": list(MIX_VALUES),
            "n_mix": args.n_mix,
            "mix_spearman_definition": "Spearman rho of mix vs the classifier's P(second family), pooled over "
                                       "every pair, source and mix value whose change is not empty; "
                                       "mix_spearman_of_means: over the per-pair mean curves (pairs x mix values)"}


def strength_curve(aras, embedder, judge: FamilyClassifier, goods, args, strips: list) -> dict:
    """Along strength 0 -> 1: the mean absolute change of the pixels inside the mask (source px,
    mean over channels) and the classifier's probability of the prompted family, for n_strength
    prompts (families in turn), each drawn with one seed at every strength."""
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.aras import SamplerConfig

    rng = np.random.default_rng([args.seed, 9])
    change = np.zeros((args.n_strength, len(STRENGTH_VALUES)))
    p_family = np.full((args.n_strength, len(STRENGTH_VALUES)), np.nan)
    shown = []  # strip rows of every prompt; the strip shows the STRIP_ROWS with the largest change
    for i in tqdm(range(args.n_strength), desc="control: strength", unit="prompt"):
        family = FAMILIES[i % len(FAMILIES)]
        src = load(goods[(i + len(MIX_PAIRS) * args.n_mix) % len(goods)])  # sources the mix curve did not use
        params, prompt = draw_prompt(rng, src[0], family)
        mask = family_mask(rng, src, params)
        seed = int(rng.integers(2**31))
        outs = [aras.synthesize(src[0], mask, prompt, seed, SamplerConfig(strength=s)) for s in STRENGTH_VALUES]
        change[i] = [np.abs(o.image - src[0])[mask].mean() for o in outs]
        p_family[i] = region_probabilities(aras, embedder, judge, src[0], outs)[:, FAMILIES.index(family)]
        captions = [f"strength {s:.2f}\nchange {c:.3f}" for s, c in zip(STRENGTH_VALUES, change[i])]
        shown.append((f"{family}: \u201c{prompt}\u201d", src[0], mask, list(zip([o.image for o in outs], captions))))
    for rank, i in enumerate(np.argsort(-change[:, -1], kind="stable")[:STRIP_ROWS]):  # the most visible, for the eye
        title, *rest = shown[i]
        strips.append((f"{title} (in-mask change at strength 1: #{rank + 1} of {args.n_strength} prompts)", *rest))
    means = change.mean(axis=0)
    pooled = spearman(np.broadcast_to(np.array(STRENGTH_VALUES), change.shape), change)
    return {"strength_spearman": pooled[0], "strength_spearman_p": pooled[1],
            "strength_spearman_of_means": spearman(STRENGTH_VALUES, means)[0],
            "strength_monotonic": bool(np.all(np.diff(means) > 0)),
            "strength_monotonic_every_sample": bool(np.all(np.diff(change, axis=1) > 0)),
            "strength_values": list(STRENGTH_VALUES), "strength_change": listed(means),
            "strength_p_family": listed(column_means(p_family)),  # None at strength 0: nothing changed
            "strength_raw_change": change.tolist(), "n_strength": args.n_strength}


def continuous_control(aras, embedder, judge: FamilyClassifier, goods, args) -> tuple[dict, list, list]:
    """The mix and strength curves -> (results, mix strip rows, strength strip rows)."""
    t0 = time.perf_counter()
    mix_strip, strength_strip = [], []
    out = {**mix_curves(aras, embedder, judge, goods, args, mix_strip),
           **strength_curve(aras, embedder, judge, goods, args, strength_strip)}
    out["runtime_s"] = round(time.perf_counter() - t0, 1)
    return out, mix_strip, strength_strip


# ---- report ------------------------------------------------------------------------------
def window_tile(image: np.ndarray, mask: np.ndarray, policy, rule, tile: int, outlined: bool):
    """The model's window around `mask` as a tile x tile PIL image; `outlined`: the mask outlined in
    red (report/figures.outline) just outside it, drawn at the tile's resolution."""
    from PIL import Image

    from qarad.report.figures import outline

    win, cover = cut(image, mask, policy, rule)
    pic = Image.fromarray((np.clip(win.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8))
    pic = np.asarray(pic.resize((tile, tile), Image.NEAREST), np.float32) / 255
    if outlined:
        inside = np.asarray(Image.fromarray(cover.numpy() > 0).resize((tile, tile), Image.NEAREST))
        pic = outline(pic, ndimage.binary_dilation(inside, iterations=max(2, tile // 64)), colour=(1.0, 0.0, 0.0))
    return Image.fromarray((pic * 255).astype(np.uint8))


def gallery_png(items: list, policy, rule, path: Path, tile: int = 160) -> None:
    """Rows of (source window | result window, mask outlined in red just outside it), prompt underneath."""
    from PIL import Image, ImageDraw, ImageFont

    font, pad, per_row, text_h = ImageFont.load_default(), 6, 3, 40
    baselines = ("procedural", "perlin")
    order = lambda g: (0, g[0]) if g[0].startswith("ARAS") else (1 + baselines.index(g[0]), "")  # noqa: E731
    items = sorted(items, key=order)  # stable: ARAS rows first, one composite after the other
    rows = [items[i:i + per_row] for i in range(0, len(items), per_row)]
    cell_w, cell_h = 2 * tile + pad, tile + text_h
    sheet = Image.new("RGB", (per_row * (cell_w + 2 * pad), len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (method, before, after, mask, prompt) in enumerate(row):
            x0, y0 = c * (cell_w + 2 * pad) + pad, r * (cell_h + pad) + pad
            for j, img in enumerate((before, after)):
                sheet.paste(window_tile(img, mask, policy, rule, tile, outlined=j == 1), (x0 + j * (tile + pad), y0))
            lines = textwrap.wrap(f"{method}: {prompt}", width=int(cell_w / 6))[:3]
            draw.multiline_text((x0, y0 + tile + 2), "\n".join(lines), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def strip_png(rows: list, policy, rule, path: Path, tile: int = 150) -> None:
    """One row per (title, source, mask, [(result, caption), ...]): the source window, then each
    result's window with the mask outlined (one source and one mask per row), caption under each
    tile and the title under the row."""
    from PIL import Image, ImageDraw, ImageFont

    font, pad, caption_h, title_h = ImageFont.load_default(), 6, 28, 30
    n = 1 + max(len(r[3]) for r in rows)
    row_h = tile + caption_h + title_h
    sheet = Image.new("RGB", (n * (tile + pad) + pad, len(rows) * (row_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (title, source, mask, results) in enumerate(rows):
        y0 = r * (row_h + pad) + pad
        tiles = [(source, "source", False)] + [(img, caption, True) for img, caption in results]
        for j, (img, caption, outlined) in enumerate(tiles):
            x0 = j * (tile + pad) + pad
            sheet.paste(window_tile(img, mask, policy, rule, tile, outlined), (x0, y0))
            draw.multiline_text((x0, y0 + tile + 2), caption, fill="black", font=font)
        lines = textwrap.wrap(title, width=int(n * (tile + pad) / 6))[:2]
        draw.multiline_text((pad, y0 + tile + caption_h), "\n".join(lines), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def control_table(res: dict, rels: dict[str, str]) -> str:
    """The 'Continuous control' part of the section: per-pair mix curves, the strength curve, strips."""
    c = res["control"]
    r = lambda v, d=3: "n/a" if v is None or v != v else f"{v:.{d}f}"  # noqa: E731
    cells = lambda values, d=3: " | ".join(r(v, d) for v in values)  # noqa: E731
    mixes = " | ".join(f"{m:g}" for m in c["mix_values"])
    strengths = " | ".join(f"{s:g}" for s in c["strength_values"])
    held = lambda p: ("{0}/{1} and {2}/{3} recognised, {4} confused, separation {5:.2f}".format(  # noqa: E731
        *p["classifier_holdout"]["recognised_first"], *p["classifier_holdout"]["recognised_second"],
        p["classifier_holdout"]["confused_either_way"], p["classifier_pair_separation"]))
    n_pooled = sum(len(p["raw_p_second"]) * len(c["mix_values"]) - p["n_unchanged"] for p in c["mix_pairs"].values())
    lines = [
        "### Continuous control: prompt mix and strength", "",
        f"Command: `{c['command']}` ({c['date']}, {c['threads']} torch thread(s), {c['runtime_s'] / 60:.1f} min; "
        f"classifier held-out top-1 {r(c['classifier_holdout_top1'])}). `qarad synth --prompt-b B --mix F` draws "
        f"each sample with its prompt's embedding moved towards B's; {c['n_mix']} sources and masks per pair "
        f"(masks alternate between the two families' kinds), each drawn with one seed at every mix value, so the "
        f"mix is all that differs along a row. Cells: the family classifier's mean P(second family) of the "
        f"changed region (9 families, chance 0.111). The pairs were chosen from the classifier's held-out "
        f"procedural renders alone, not from ARAS samples: the second families are the four it recognises best, "
        f"each with a first family it never confuses with it (in brackets: renders of each family recognised, "
        f"confused with the other, and separation, the share it gives the higher probability of the two to the "
        f"right one).", "",
        f"| pair (classifier on held-out renders) | {mixes} | Spearman (samples) |",
        "|---" * (len(c["mix_values"]) + 2) + "|",
        *[f"| {name} ({held(p)}) | {cells(p['p_second'])} | {r(p['spearman'])} |"
          for name, p in c["mix_pairs"].items()],
        "", f"`mix_spearman` (pooled over all {n_pooled} samples: every pair, source and mix value) "
        f"**{r(c['mix_spearman'])}** (p = {c['mix_spearman_p']:.2g}); over the {len(c['mix_pairs'])} x "
        f"{len(c['mix_values'])} per-pair means {r(c['mix_spearman_of_means'])} "
        f"(p = {c['mix_spearman_of_means_p']:.2g}).", "",
        f"| strength | {strengths} | Spearman (samples) |", "|---" * (len(c["strength_values"]) + 2) + "|",
        f"| mean absolute in-mask change ({c['n_strength']} prompts) | {cells(c['strength_change'])} "
        f"| {r(c['strength_spearman'])} |",
        f"| classifier P(prompted family) | {cells(c['strength_p_family'])} | |",
        "", f"`strength_spearman` **{r(c['strength_spearman'])}**; monotonic in the mean: "
        f"{'yes' if c['strength_monotonic'] else 'no'}, in every sample: "
        f"{'yes' if c['strength_monotonic_every_sample'] else 'no'}. Strength scales the blend of one set of "
        "codes (the seed fixes them), so the in-mask change is linear in it by construction.", "",
        f"![mix strip]({rels['mix_strip']})", "", f"![strength strip]({rels['strength_strip']})",
    ]
    return "\n".join(lines)


def table(res: dict, dataset: str, rels: dict[str, str]) -> str:
    r = lambda v, d=3: "n/a" if v is None or v != v else f"{v:.{d}f}"  # noqa: E731
    methods, fit = ("aras", "procedural", "perlin"), res["fit_minutes"].get(dataset)
    row = lambda label, cells: f"| {label} | " + " | ".join(cells) + " |"  # noqa: E731
    lines = [
        f"Dataset `{dataset}`; ARAS model fitted in {r(fit, 1)} min; run took {res['runtime_s'] / 60:.1f} min "
        f"with {res['threads']} torch threads; ARAS sampler temperature {res['sampler']['temperature']:g}, "
        f"CFG {res['sampler']['cfg_scale']:g}; {'with' if res.get('refiner') else 'no'} refiner.", "",
        "| | ARAS | procedural | perlin (DRAEM-style) |", "|---|---|---|---|",
        row(f"KID vs real defect regions, mean ± std (lower is better; real vs real: {r(res['kid_real_halves'])})",
            [f"{r(res['kid'][m])} ± {r(res['kid_std'][m])}" for m in methods]),
        row("seam: ring gradient out / in, median (1 = no added edge)", [r(res["seam"][m]) for m in methods]),
        row(f"samples (real defect regions: {res['n_kid']['real']})", [str(res["n_kid"][m]) for m in methods]),
        "", "| measure | value |", "|---|---|",
        f"| ARAS samples / s, end to end ({res['mean_masked_tokens']:.1f} masked tokens on average) "
        f"| {r(res['aras_per_s'], 2)} |",
        f"| naive samples / s (all {res['naive_tokens']} tokens, no KV cache) | {r(res['naive_per_s'], 4)} |",
        f"| speed-up | {r(res['speedup'], 1)}x |",
        f"| `qarad synth` samples / s, 1 process (start-up and model load included) "
        f"| {r(res['cli_per_s']['workers_1'], 2)} |",
        f"| `qarad synth --workers 2` samples / s (two single-threaded processes) "
        f"| {r(res['cli_per_s']['workers_2'], 2)} |",
        f"| language control top-1, {len(res['language_control_types'])} families, {res['n_per_family']} prompts "
        f"each (chance {r(res['language_control_chance'])}) | {r(res['language_control_top1'])} |",
        *([f"| the same prompts, masks and codes without the refiner | {r(res['language_control_top1_unrefined'])} |"]
          if res.get("refiner") else []),
        f"| classifier top-1 on held-out procedural renders (its ceiling) | {r(res['classifier_holdout_top1'])} |",
        f"| classifier top-1 on the same renders after tokenizer encode/decode (the tokenizer's ceiling) "
        f"| {r(res['tokenizer_ceiling_top1'])} |",
        *([f"| the same, decoded windows passed through the refiner with each render's clean window and prompt "
           f"| {r(res['refiner_ceiling_top1'])} |"] if res.get("refiner") else []),
        "", "Language control per family: "
        + ", ".join(f"{k} {v:.2f}" for k, v in res["language_control_per_family"].items()) + ".",
        "", f"![gallery]({rels['gallery']})",
    ]
    return "\n".join(lines + (["", control_table(res, rels)] if "control" in res else []))


def fit_minutes(model: Path) -> float | None:
    from qarad.synthesis.model import TIMINGS

    path = model / TIMINGS
    if not path.is_file():
        print(f"note: {path} not found (model fitted before stage timings existed): fit_minutes is null",
              file=sys.stderr)
        return None
    return round(sum(json.loads(path.read_text()).values()) / 60.0, 2)


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """--model, --data and --dataset, as every benchmark of a fitted ARAS model takes them."""
    ap.add_argument("--model", type=Path, required=True, help="fitted ARAS model folder (qarad fit)")
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--dataset", default="magnetic_tile/magnetic_tile", choices=list(common.DATASETS))


def ready(ap: argparse.ArgumentParser, args) -> bool:
    """False (having said so) when the dataset is absent: the benchmark skips; a --model that is
    not a fitted model is a usage error."""
    if not common.available(args.data, args.dataset):
        print(f"skip: {args.dataset} not found under {args.data}", file=sys.stderr)
        return False
    from qarad.synthesis.model import CONFIG

    if getattr(args, "only", None) != "foreground" and not (args.model / CONFIG).is_file():
        ap.error(f"{args.model}: not an ARAS model folder (no aras.json); fit one with `qarad fit`")
    return True


def output_paths(args) -> dict[str, Path]:
    """The gallery and the two control strips, next to --out-json."""
    default = args.out_json == common.RESULTS / "synthesis.json"
    gallery = args.gallery or args.out_json.with_name("gallery.png" if default else args.out_json.stem + "_gallery.png")
    return {"gallery": gallery, "mix_strip": args.out_json.with_name(args.out_json.stem + "_mix_strip.png"),
            "strength_strip": args.out_json.with_name(args.out_json.stem + "_strength_strip.png")}


def relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(common.ROOT).as_posix()
    except ValueError:
        return str(path)


def control_results(control: dict, model: Path) -> dict:
    """synthesis.json's keys for the control curves: the two headline numbers and the rest, with
    the command, date and model they were measured with (a `--only control` run merges them into
    a file another run wrote)."""
    env = common.envelope({})
    headline = {k: control[k] for k in ("mix_spearman", "strength_spearman")}
    return {"control_curves": headline,
            "control": {**control, "command": env["command"], "date": env["date"], "model": str(model),
                        "threads": torch.get_num_threads()}}


def composite_results(aras, goods, defects, args, samplers, default, embedder, gallery) -> dict:
    """KID and seams of every composite (same prompts, masks and codes) and their attribute control."""
    real = realism(embedder, goods, defects, args, gallery, aras.policy, aras.rule, aras,
                   {f"aras_{c}": s for c, s in samplers.items()})
    for key in ("kid", "kid_std", "seam", "n_kid", "n_empty_change", "synthesis_s_per_sample"):
        real[key]["aras"] = real[key][f"aras_{default}"]  # the default composite, as before
    attrs = attribute_control(aras, goods, load, draw_prompt, args.n_attr, args.seed, samplers)
    return {**real, "attribute_control": attrs[default], "attribute_control_ceiling": attrs["procedural"],
            "attribute_control_detail": attrs, "default_composite": default}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--n-speed", type=int, default=20)
    ap.add_argument("--n-naive", type=int, default=2)
    ap.add_argument("--n-cli", type=int, default=40, help="samples per `qarad synth --workers 1|2` timing")
    ap.add_argument("--n-per-family", type=int, default=20, help="ARAS samples per family for language control")
    ap.add_argument("--n-render", type=int, default=80, help="procedural renders per family to train the classifier")
    ap.add_argument("--n-kid", type=int, default=120)
    ap.add_argument("--n-mix", type=int, default=32,
                    help=f"control: sources and masks per family pair, each drawn at every mix {MIX_VALUES}")
    ap.add_argument("--n-strength", type=int, default=18,
                    help=f"control: prompts (families in turn), each drawn at every strength {STRENGTH_VALUES}")
    ap.add_argument("--only", choices=["control", "foreground", "composites"],
                    help="control: only the mix and strength curves (and their strips); foreground: only the learned "
                         "foreground's check (no model needed); composites: only KID, seams and attribute control "
                         "of each composite; merged into --out-json's other keys when it exists")
    ap.add_argument("--composites", default="replace,grain",
                    help="ARAS composites measured side by side (comma-separated; the default one is always in)")
    ap.add_argument("--n-attr", type=int, default=90, help="prompts (families in turn) for attribute control")
    ap.add_argument("--n-foreground", type=int, default=60,
                    help="test images with real defects for the foreground check")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", type=Path, default=common.RESULTS / "synthesis.json")
    ap.add_argument("--gallery", type=Path, default=None, help="default: gallery.png next to --out-json")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if not ready(ap, args):
        return
    if args.n_naive < 1 or args.n_speed < 1:
        ap.error("--n-speed and --n-naive must be at least 1 (the speed-up compares them)")
    if args.n_mix < 2 or args.n_strength < 1:
        ap.error("--n-mix must be at least 2 (masks alternate between the pair's two kinds), --n-strength at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from qarad.backbone import Backbone, BackboneConfig
    from qarad.data.layouts import scan
    from qarad.backbone import PatchEmbedder
    from qarad.synthesis.aras import SamplerConfig
    from qarad.synthesis.pipeline import ARAS

    t0 = time.perf_counter()
    root, cat = common.DATASETS[args.dataset]
    goods = [str(s.image) for s in scan(args.data / root, cat, "test", "mvtec") if s.label == 0]
    defects = [s for s in scan(args.data / root, cat, "test", "mvtec") if s.label == 1 and s.mask is not None]
    train = [str(s.image) for s in scan(args.data / root, cat, "train", "mvtec")]
    results = {"foreground": {**learn_part(train), **foreground_check(defects, args.n_foreground, args.seed)}}
    if args.only == "foreground":
        document = json.loads(args.out_json.read_text()) if args.out_json.is_file() else common.envelope({})
        document["results"].update(results)
        common.write_json(args.out_json, document)
        print(json.dumps(results, indent=1))
        return
    default = SamplerConfig().composite
    composites = list(dict.fromkeys([default, *args.composites.split(",")]))
    samplers = {c: replace(SamplerConfig(), composite=c) for c in composites}
    aras = ARAS.load(args.model)
    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16)))).eval()
    paths = output_paths(args)
    gallery: list = []
    if args.only == "composites":  # the composite choice alone: realism and attributes, no judge, no timing
        results.update(composite_results(aras, goods, defects, args, samplers, default, embedder, gallery))
        document = json.loads(args.out_json.read_text()) if args.out_json.is_file() else common.envelope({})
        document["results"].update(results)
        common.write_json(args.out_json, document)
        gallery_png(gallery, aras.policy, aras.rule, paths["gallery"])
        print(json.dumps({k: results[k] for k in ("kid", "seam", "attribute_control", "attribute_control_ceiling")},
                         indent=1, default=str))
        return
    if args.only is None:
        results.update(speed(aras, goods, args.n_speed, args.n_naive, args.seed))
        results["aras_per_s_by_composite"] = {
            c: speed(aras, goods, args.n_speed, 0, args.seed, samplers[c])["aras_per_s"] for c in composites}
        results["cli_per_s"] = cli_speed(args.model, goods, args.n_cli)
    judge = family_classifier(embedder, train, aras.policy, aras.rule, args.n_render, args.seed)
    if args.only is None:
        results.update(language_control(aras, embedder, goods, judge, args, gallery))
        results["language_control_by_composite"] = {default: results["language_control_top1"]}
        for c in composites[1:]:
            results["language_control_by_composite"][c] = language_control(
                aras, embedder, goods, judge, args, gallery, samplers[c], ceilings=False)["language_control_top1"]
        results.update(composite_results(aras, goods, defects, args, samplers, default, embedder, gallery))
    control, mix_rows, strength_rows = continuous_control(aras, embedder, judge, goods, args)
    control["classifier_holdout_top1"] = judge.holdout_top1
    strip_png(mix_rows, aras.policy, aras.rule, paths["mix_strip"])
    strip_png(strength_rows, aras.policy, aras.rule, paths["strength_strip"])
    results.update(control_results(control, args.model))
    if args.only is None:
        results["fit_minutes"] = {args.dataset: fit_minutes(args.model)}
        results["sampler"] = asdict(SamplerConfig())  # what every ARAS sample above was drawn with
        results["refiner"] = aras.refiner is not None
        results.update(dataset=args.dataset, model=str(args.model), seed=args.seed, threads=torch.get_num_threads(),
                       runtime_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(common.peak_rss_mb()))
        gallery_png(gallery, aras.policy, aras.rule, paths["gallery"])
        document = common.envelope(results)
    else:  # keep the other keys (and the envelope) of the run that wrote them
        document = json.loads(args.out_json.read_text()) if args.out_json.is_file() else common.envelope({})
        if document["results"].get("model") not in (None, str(args.model)):
            print(f"note: {args.out_json} was written with model {document['results']['model']}; the control "
                  f"curves come from {args.model} (results.control.model says so)", file=sys.stderr)
        document["results"].update(results)
    common.write_json(args.out_json, document)
    merged = document["results"]
    rels = {k: relative(v) for k, v in paths.items()}
    if "kid" not in merged:  # no whole run in --out-json yet: the section's table needs one
        print(control_table(merged, rels))
        print(f"note: {args.out_json} holds no whole run; BENCHMARKS.md left as it is", file=sys.stderr)
        return
    md = table(merged, merged.get("dataset", args.dataset), rels)
    if not args.no_markdown:
        common.update_section("synthesis", md)
    print(md)


if __name__ == "__main__":
    main()
