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
* seams: Sobel gradient on a 1-px ring around the changed mask, output / input (1 = no added edge).
Writes benchmarks/results/synthesis.json, benchmarks/results/gallery.png and a BENCHMARKS.md section.
The realism and seam measures of the two baselines alone, without a model: benchmarks/renderer_realism.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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

KID_SUBSETS, KID_SUBSET_MAX = 10, 100
SEAM_EPS = 1e-3  # added to both ring means: flat (binary) material has zero gradient
L2 = 1e-2  # classifier weight decay on standardised features
HOLDOUT = 0.25  # share of the procedural renders held out to check the classifier itself
# The family classifier looks at windows upsampled to the backbone's ImageNet input side: at the
# model's 64 px its stride-8 grid is 8x8 and thin defects sit far below the scale it was trained
# at (held-out top-1 on procedural renders, magnetic tile: 0.43 at 64 px, 0.65 at 160, 0.76 at 224).
CLASSIFIER_SIDE = 224


# ---- data --------------------------------------------------------------------------------
@lru_cache(maxsize=128)
def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    from qarad.data.io import read_image
    from qarad.defects.masks import foreground_mask

    image = read_image(path)
    return image, foreground_mask(image)


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


def speed(aras, goods: list[str], n_speed: int, n_naive: int, seed: int) -> dict:
    from qarad.defects.masks import propose_mask
    from qarad.synthesis import pipeline

    rng = np.random.default_rng([seed, 1])
    jobs = []
    for i in range(n_speed + 1):  # job 0 is the warm-up
        image, fg = load(goods[i % len(goods)])
        jobs.append((image, propose_mask(rng, image.shape[:2], fg), draw_prompt(rng, image)[1], int(rng.integers(2**31))))
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
    from qarad.synthesis.fit import zoom_to_mask

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


def fit_logreg(x: torch.Tensor, y: torch.Tensor, k: int, seed: int):
    """Multinomial logistic regression on standardised features (L2, full-batch LBFGS) -> predict(x)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], k, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(k, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + L2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda q: (((q - mean) / std) @ w + b).argmax(1)


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
            win, cover = cut(out.image, out.mask, aras.policy, aras.rule)
            pred.append(int(predict(features(embedder, [win], [cover], side=CLASSIFIER_SIDE))[0]))
            if family not in seen:
                seen.add(family)
                gallery.append(("ARAS", src[0], out.image, mask, prompt))
    bar.close()
    return np.array(truth), np.array(pred), unchanged


@dataclass
class FamilyClassifier:
    renders: list[Render]
    labels: torch.Tensor  # (n,) family index of each render
    x: torch.Tensor  # (n, 304) their features at CLASSIFIER_SIDE
    held: torch.Tensor  # (n,) bool: held out from training
    predict: Callable[[torch.Tensor], torch.Tensor]  # features -> family index

    @property
    def holdout_top1(self) -> float:
        return float((self.predict(self.x[self.held]) == self.labels[self.held]).double().mean())


def family_classifier(embedder, train: list[str], policy, rule, n_render: int, seed: int) -> FamilyClassifier:
    """The language-control judge: logistic regression on procedural renders cut by `rule`,
    HOLDOUT of them held out."""
    from qarad.defects.vocab import FAMILIES

    renders, labels = procedural_renders(train, policy, rule, n_render, seed)
    x = features(embedder, [r.window for r in renders], [r.cover for r in renders], side=CLASSIFIER_SIDE)
    held = torch.from_numpy(np.random.default_rng([seed, 3]).random(len(labels)) < HOLDOUT)
    return FamilyClassifier(renders, labels, x, held, fit_logreg(x[~held], labels[~held], len(FAMILIES), seed))


def language_control(aras, embedder, goods, train, args, gallery: list) -> dict:
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.aras import SamplerConfig

    judge = family_classifier(embedder, train, aras.policy, aras.rule, args.n_render, args.seed)
    renders, labels, held, predict = judge.renders, judge.labels, judge.held, judge.predict
    idx = torch.nonzero(held)[:, 0].tolist()

    def ceiling(refine: bool) -> float:
        recon = features(embedder, [through_tokenizer(aras, renders[i], refine) for i in idx],
                         [renders[i].cover for i in idx], side=CLASSIFIER_SIDE)
        return float((predict(recon) == labels[held]).double().mean())

    tokenizer_top1 = ceiling(refine=False)
    refined_top1 = ceiling(refine=True) if aras.refiner is not None else None
    truth, pred, unchanged = aras_predictions(aras, embedder, predict, goods, args, SamplerConfig(), gallery)
    # the same prompts, masks and seeds (hence codes) without the refiner: what it adds, side by side
    unrefined = None
    if aras.refiner is not None:
        unrefined = float((aras_predictions(aras, embedder, predict, goods, args, SamplerConfig(refine=False),
                                            [])[1] == truth).mean())
    per_family = {fam: float((pred[truth == i] == i).mean()) for i, fam in enumerate(FAMILIES)}
    confusion = [[int(((truth == i) & (pred == j)).sum()) for j in range(len(FAMILIES))] for i in range(len(FAMILIES))]
    return {"language_control_top1": float((pred == truth).mean()), "language_control_top1_unrefined": unrefined,
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


def synthetic_sets(goods, n: int, seed: int, gallery: list, policy, rule, aras=None):
    """n samples per method on the same source images, ARAS only when `aras` is given. ARAS and
    procedural share the family, the proposed mask and the defect parameters: `procedural` draws
    params then mask from its rng, and an identically seeded rng replays those draws for ARAS.
    Perlin draws its own noise mask. -> ({method: [(window, cover, seam) per sample whose change
    is not empty]}, empty counts, {method: seconds spent synthesizing})."""
    from qarad.defects.baselines import perlin_texture, procedural

    names = ("aras", "procedural", "perlin") if aras is not None else ("procedural", "perlin")
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
            t0 = time.perf_counter()
            sample_seed = int(np.random.default_rng(key + [1]).integers(2**31))
            results["aras"] = aras.synthesize(image, mask, prompt, sample_seed)
            seconds["aras"] += time.perf_counter() - t0
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


def realism(embedder, goods, defects, args, gallery: list, policy, rule, aras=None) -> dict:
    """KID and seams of each method (ARAS only when `aras` is given) against `args.n_kid` real
    defect regions, all cut by `policy` and `rule`."""
    real = real_features(embedder, defects, args.n_kid, args.seed, policy, rule)
    made, empty, seconds = synthetic_sets(goods, args.n_kid, args.seed, gallery, policy, rule, aras)
    rng = np.random.default_rng([args.seed, 7])
    methods = ("aras", "procedural", "perlin")  # each draws its own KID subsets: the same numbers without ARAS
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


# ---- report ------------------------------------------------------------------------------
def gallery_png(items: list, policy, rule, path: Path, tile: int = 160) -> None:
    """Rows of (source window | result window, mask outlined in red just outside it), prompt underneath."""
    from PIL import Image, ImageDraw, ImageFont

    font, pad, per_row, text_h = ImageFont.load_default(), 6, 3, 40
    items = sorted(items, key=lambda g: ("ARAS", "procedural", "perlin").index(g[0]))  # stable: ARAS rows first
    rows = [items[i:i + per_row] for i in range(0, len(items), per_row)]
    cell_w, cell_h = 2 * tile + pad, tile + text_h
    sheet = Image.new("RGB", (per_row * (cell_w + 2 * pad), len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (method, before, after, mask, prompt) in enumerate(row):
            x0, y0 = c * (cell_w + 2 * pad) + pad, r * (cell_h + pad) + pad
            pics = []
            for img in (before, after):
                win, cover = cut(img, mask, policy, rule)
                pics.append(win.permute(1, 2, 0).numpy())
            grown = ndimage.binary_dilation(cover.numpy() > 0, np.ones((3, 3), bool), iterations=2)
            outline = grown ^ ndimage.binary_erosion(grown, np.ones((3, 3), bool))  # just outside the mask
            pics[1] = np.where(outline[..., None], np.array([1.0, 0.0, 0.0]), pics[1])
            for j, pic in enumerate(pics):
                im = Image.fromarray((np.clip(pic, 0, 1) * 255).astype(np.uint8)).resize((tile, tile), Image.NEAREST)
                sheet.paste(im, (x0 + j * (tile + pad), y0))
            lines = textwrap.wrap(f"{method}: {prompt}", width=int(cell_w / 6))[:3]
            draw.multiline_text((x0, y0 + tile + 2), "\n".join(lines), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def table(res: dict, dataset: str, gallery_rel: str) -> str:
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
        "", f"![gallery]({gallery_rel})",
    ]
    return "\n".join(lines)


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

    if not (args.model / CONFIG).is_file():
        ap.error(f"{args.model}: not an ARAS model folder (no aras.json); fit one with `qarad fit`")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--n-speed", type=int, default=20)
    ap.add_argument("--n-naive", type=int, default=2)
    ap.add_argument("--n-cli", type=int, default=40, help="samples per `qarad synth --workers 1|2` timing")
    ap.add_argument("--n-per-family", type=int, default=20, help="ARAS samples per family for language control")
    ap.add_argument("--n-render", type=int, default=80, help="procedural renders per family to train the classifier")
    ap.add_argument("--n-kid", type=int, default=120)
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
    aras = ARAS.load(args.model)
    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16)))).eval()
    gallery: list = []
    results = speed(aras, goods, args.n_speed, args.n_naive, args.seed)
    results["cli_per_s"] = cli_speed(args.model, goods, args.n_cli)
    results.update(language_control(aras, embedder, goods, train, args, gallery))
    results.update(realism(embedder, goods, defects, args, gallery, aras.policy, aras.rule, aras))
    results["fit_minutes"] = {args.dataset: fit_minutes(args.model)}
    results["sampler"] = asdict(SamplerConfig())  # what every ARAS sample above was drawn with
    results["refiner"] = aras.refiner is not None
    results.update(dataset=args.dataset, model=str(args.model), seed=args.seed, threads=torch.get_num_threads(),
                   runtime_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(common.peak_rss_mb()))
    gallery_path = args.gallery or args.out_json.with_name(
        "gallery.png" if args.out_json == common.RESULTS / "synthesis.json" else args.out_json.stem + "_gallery.png")
    gallery_png(gallery, aras.policy, aras.rule, gallery_path)
    common.write_json(args.out_json, common.envelope(results))
    try:
        rel = gallery_path.resolve().relative_to(common.ROOT).as_posix()
    except ValueError:
        rel = str(gallery_path)
    md = table(results, args.dataset, rel)
    if not args.no_markdown:
        common.update_section("synthesis", md)
    print(md)


if __name__ == "__main__":
    main()
