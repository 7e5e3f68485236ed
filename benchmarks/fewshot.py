"""Few-shot: what K real defects per type buy, for detection and for generation.

    python benchmarks/fewshot.py --models magnetic_tile/magnetic_tile=benchmarks/models/magnetic_tile \\
        --models mpdd/metal_plate=benchmarks/models/mpdd [--shots 1 5] [--seeds 0 1 2] [--prior-steps 400]
        [--work benchmarks/models/fewshot-work] [--quick]

Per dataset, K (--shots) and seed of the shot choice (--seeds), data/real_defects.select_real_defects
draws up to K real defect images per type from the test split; every number below is measured on the
test images that remain (the shots are left out, as `qarad eval` leaves them out of a run's test split).
The few-shot ARAS model is `qarad fit --init MODEL --real-defects ROOT/CATEGORY --shots K --shot-seed S
--prior-steps N --seed S`: MODEL's tokenizer, corpus and QAW scorer, its prior trained on for N steps
with the shots in the corpus.

Detection (the metric keys of detect.json, means over the seeds; heads seeded by the shot seed):
  patchcore     memory bank, no synthesis (fitted once, graded on each seed's remaining test images)
  zero_shot     the default `qarad train --method qarad`, as benchmarks/ablation.py's `qarad`: MODEL's ARAS
                samples (procedural prompts, QAW linear weights) + Perlin patches
  copy_paste    zero_shot + the real shots (`qarad train --real-defects`: whole views, 8 flips/turns) +
                copy-paste samples of the shots (`qarad copy-paste`, weight 1) beside the ARAS samples
  aras_fewshot  zero_shot + the real shots + as many few-shot ARAS samples (the few-shot model prompted with
                the real type names, in masks shaped like the shots') beside the ARAS samples: the same
                pools as copy_paste, only the generator of the real-type samples differs
Generation, per real type, on n-type samples of each generator in the same masks (shaped like the
shots' masks, on normal train images) with the same seeds: zero_shot is MODEL prompted with the type
name, aras_fewshot the few-shot model, copy_paste the shots themselves pasted:
  kid        KID (benchmarks/synthesis.py: region_pool features of the window around each change) to the
             held-out real defects of that type, mean over types
  type_top1  a logistic-regression type classifier trained on the real defects alone (the K shots per
             type plus half of the held-out ones; the other half gives its own top-1,
             classifier_holdout_top1) labels each generated sample; chance 1 / number of types (none for
             a dataset with one type)
and a gallery per dataset: each type's real shots next to few-shot and zero-shot ARAS samples.

Stages run in child processes and are kept in OUT.partial.json; the fits, synthetic sets and finished
detector heads live in --work, so a rerun reuses every finished stage. `--quick` is a smoke run
(one K, one seed, tiny sets, limited train/test images): minutes, numbers not comparable.
Writes benchmarks/results/fewshot.json (results[dataset]["k1"|"k5"]) and the "fewshot" section of
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation  # noqa: E402
import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detect import METRICS  # noqa: E402

DATASETS = ("magnetic_tile/magnetic_tile", "mpdd/metal_plate")
ARMS = ("zero_shot", "copy_paste", "aras_fewshot")
# what the arms train on (module docstring); earlier runs' sets and heads (half procedural few-shot
# samples in place of MODEL's; few-shot samples drawn by the benchmark's own loop) are not reused
POOLS = "aras_fewshot real-type samples (qarad synth --auto-masks) beside zero_shot's"
GENERATORS = ARMS  # zero_shot: MODEL itself; copy_paste: the shots pasted; aras_fewshot: the few-shot model
SYNTH_SEED = 0
FEATURE_BATCH = 8
MAX_NORMAL_VIEWS = 4000  # as `qarad train --max-normal-views`
GALLERY_SAMPLES = 4  # generated samples per type and ARAS generator in the gallery
DEFAULT_WORK = common.ROOT / "benchmarks" / "models" / "fewshot-work"
FULL = {"shots": [1, 5], "seeds": [0, 1, 2], "prior_steps": 400, "n_synth": 300, "n_type": 20, "n_real": 100,
        "steps": 1000, "perlin_samples": 200, "limit_train": None, "limit_test": None}
QUICK = {"shots": [1], "seeds": [0], "prior_steps": 10, "n_synth": 16, "n_type": 3, "n_real": 6,
         "steps": 30, "perlin_samples": 8, "limit_train": 24, "limit_test": 24}


# ---- where things live ---------------------------------------------------------------------
def root_cat(args, key: str) -> tuple[Path, str]:
    root, cat = common.DATASETS[key]
    return args.data / root, cat


def selection(args, key: str, k: int, seed: int):
    from qarad.data.real_defects import select_real_defects

    root, cat = root_cat(args, key)
    return select_real_defects([root / cat], k, seed)


def run_dir(args, key: str, k: int, seed: int) -> Path:
    return ablation.dataset_dir(args, key) / f"k{k}-s{seed}-p{args.prior_steps}"


def model_dir(args, key: str, k: int, seed: int) -> Path:
    return run_dir(args, key, k, seed) / "model"


def _tagged(folder: Path, stem: str, settings: dict) -> Path:
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return folder / f"{stem}-{tag}"


# ---- 1. the few-shot fit -------------------------------------------------------------------
def run_fit(args, key: str, k: int, seed: int) -> dict:
    """`qarad fit --init MODEL --real-defects ... --shots K --shot-seed S --prior-steps N --seed S`."""
    from qarad import api

    root, cat = root_cat(args, key)
    init = args.models[key]
    config = api.finetune_config(init, args.prior_steps, seed=seed)
    t0 = time.perf_counter()
    done = api.fit(root, cat, model_dir(args, key, k, seed), config, max_train_images=args.limit_train,
                   real_defects=selection(args, key, k, seed), init=init)
    return {"fit_s": done.seconds, "wall_s_this_run": time.perf_counter() - t0, "model": str(done.model)}


# ---- 2. synthetic sets and generation metrics ----------------------------------------------
def fewshot_set(args, key: str, k: int, seed: int, real, train_paths: list[Path]) -> Path:
    """n-synth samples of the few-shot model, as `qarad synth MODEL --prompts TYPE... --auto-masks`
    then `qarad score` make them: the real types in turn, each named by its type (the model resolves
    it to its fitted prompt) in a proposed mask shaped like one of its shots'; QAW-scored. (The
    procedural families come from MODEL's own set beside it.)"""
    from qarad import api
    from qarad.synthesis import jobs
    from qarad.synthesis.aras import SamplerConfig

    folder_model = model_dir(args, key, k, seed)
    settings = json.loads(json.dumps({"method": "qarad synth --auto-masks", "model": str(folder_model.resolve()),
                                      "images": [str(p) for p in train_paths], "n": args.n_synth, "seed": SYNTH_SEED,
                                      "sampler": asdict(SamplerConfig()), "prompts": list(real.types),
                                      "pools": POOLS}))
    folder = _tagged(run_dir(args, key, k, seed), f"aras-n{args.n_synth}", settings)
    api.synth(folder_model, train_paths, list(real.types), folder, n=args.n_synth, seed=SYNTH_SEED, auto_masks=True)
    if any(e.get("score") is None for e in jobs.read_manifest(folder / jobs.MANIFEST)):
        api.score(folder)
    return folder


def copy_paste_set(args, key: str, k: int, seed: int, real, train_paths: list[Path]) -> Path:
    from qarad import api

    folder = run_dir(args, key, k, seed) / f"copy-paste-n{args.n_synth}"
    api.copy_paste(real, train_paths, folder, args.n_synth, SYNTH_SEED)
    return folder


def _held_out(args, key: str, real) -> dict[str, list]:
    """Per type, the real defects that are not shots (a seeded order, at most n-real)."""
    from qarad.data.layouts import scan

    root, cat = root_cat(args, key)
    kept, _ = real.split([s for s in scan(root, cat, "test", "mvtec") if s.label == 1])
    out = {}
    for t in real.types:
        mine = [s for s in kept if s.defect_type == t]
        order = np.random.default_rng([SYNTH_SEED, 9]).permutation(len(mine))
        out[t] = [mine[i] for i in order[: args.n_real]]
    return out


def _window(image, mask, aras):
    from synthesis import cut

    return cut(image, mask, aras.policy, aras.rule)


def generated(args, real, few, zero, train_paths: list[Path]) -> dict[str, dict[str, list]]:
    """{generator: {type: [(window, cover) per sample that changed something]}}: n-type samples per
    type on the same normal images, in the same masks (shaped like the shots'), with the same seeds."""
    from qarad.data.io import read_image, read_mask
    from qarad.defects.masks import foreground_mask
    from qarad.defects.transplant import PasteConfig, cut, mask_like, place, transform

    paste, out = PasteConfig(), {g: {t: [] for t in real.types} for g in GENERATORS}
    for t in real.types:
        shots = real.of_type(t)
        patches = []
        for d in shots:
            image = read_image(d.image)
            patches.append((cut(image, read_mask(d.mask, image.shape[:2])), image.shape[:2]))
        for j in range(args.n_type):
            rng = np.random.default_rng([SYNTH_SEED, 10, j, *t.encode()])
            image = read_image(train_paths[int(rng.integers(len(train_paths)))])
            fg = foreground_mask(image)
            which = j % len(shots)
            template = read_mask(shots[which].mask)
            mask = mask_like(rng, template, image.shape[:2], fg)
            sample_seed = int(rng.integers(2**31))
            for name, aras in (("aras_fewshot", few), ("zero_shot", zero)):
                res = aras.synthesize(image, mask, real.prompts[t], sample_seed)
                if res.mask.any():
                    out[name][t].append((*_window(res.image, res.mask, few), image, res.image, res.mask))
            patch, (sh, sw) = patches[which]
            moved = transform(patch, rng, paste, (image.shape[0] / sh, image.shape[1] / sw))
            placed = place(image, moved, rng, "alpha", fg, paste)
            if placed.changed.any():
                out["copy_paste"][t].append((*_window(placed.image, placed.changed, few), image, placed.image,
                                             placed.changed))
    return out


def generation(args, key: str, real, folder_model: Path, train_paths: list[Path]) -> tuple[dict, list]:
    """KID per type and the type classifier's top-1, per generator (module docstring) -> (results, gallery)."""
    from synthesis import CLASSIFIER_SIDE, features, fit_logreg, kid

    from qarad.backbone import Backbone, BackboneConfig, PatchEmbedder
    from qarad.data.io import read_image, read_mask
    from qarad.data.mvtec import Sample
    from qarad.synthesis.pipeline import ARAS

    few, zero = ARAS.load(folder_model), ARAS.load(args.models[key])
    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16)))).eval()
    held = _held_out(args, key, real)

    def real_windows(samples):
        wins = []
        for s in samples:
            image = read_image(s.image)
            mask = read_mask(s.mask, image.shape[:2])
            if mask.any():
                wins.append(_window(image, mask, few))
        return wins

    shots = {t: real_windows([Sample(Path(d.image), t, Path(d.mask)) for d in real.of_type(t)]) for t in real.types}
    helds = {t: real_windows(held[t]) for t in real.types}
    made = generated(args, real, few, zero, train_paths)
    rng = np.random.default_rng([SYNTH_SEED, 7])
    res = {g: {"kid_per_type": {}} for g in GENERATORS}
    for t in real.types:
        if len(helds[t]) < 2:
            continue
        x = features(embedder, [w for w, _ in helds[t]], [c for _, c in helds[t]])
        unit = float((x * x).mean().sqrt())  # as benchmarks/synthesis.py: the real set's RMS entry
        for g in GENERATORS:
            kept = made[g][t]
            y = features(embedder, [k[0] for k in kept], [k[1] for k in kept])
            res[g]["kid_per_type"][t] = kid(x / unit, y / unit, rng)[0] if len(kept) >= 2 else float("nan")
    for g in GENERATORS:
        vals = [v for v in res[g]["kid_per_type"].values() if v == v]
        res[g]["kid"] = float(np.mean(vals)) if vals else float("nan")
        res[g]["n_samples"] = {t: len(made[g][t]) for t in real.types}
    extra = {"n_types": len(real.types), "chance": 1 / len(real.types), "n_held_out": {t: len(helds[t]) for t in helds}}
    if len(real.types) > 1:  # the type classifier: trained on real defects only
        side = CLASSIFIER_SIDE
        train_w = [(w, i) for i, t in enumerate(real.types) for w in shots[t] + helds[t][0::2]]
        test_w = [(w, i) for i, t in enumerate(real.types) for w in helds[t][1::2]]
        xt = features(embedder, [w[0] for w, _ in train_w], [w[1] for w, _ in train_w], side=side)
        predict = fit_logreg(xt, torch.tensor([i for _, i in train_w]), len(real.types), SYNTH_SEED)
        if test_w:
            xh = features(embedder, [w[0] for w, _ in test_w], [w[1] for w, _ in test_w], side=side)
            extra["classifier_holdout_top1"] = float((predict(xh) == torch.tensor([i for _, i in test_w]))
                                                     .double().mean())
        for g in GENERATORS:
            items = [(k, i) for i, t in enumerate(real.types) for k in made[g][t]]
            n_all = len(real.types) * args.n_type  # a sample that changed nothing counts as a miss
            if not items:
                res[g]["type_top1"] = 0.0
                continue
            xg = features(embedder, [k[0] for k, _ in items], [k[1] for k, _ in items], side=side)
            hits = int((predict(xg) == torch.tensor([i for _, i in items])).sum())
            res[g]["type_top1"] = hits / n_all
    else:
        for g in GENERATORS:
            res[g]["type_top1"] = None
        extra["type_top1_note"] = "one defect type: nothing to tell apart"
    gallery = [(t, [w for w, _ in shots[t]], [k[0] for k in made["aras_fewshot"][t][:GALLERY_SAMPLES]],
                [k[0] for k in made["zero_shot"][t][:GALLERY_SAMPLES]]) for t in real.types]
    return {**res, **extra}, gallery


def gallery_png(rows: list, path: Path, tile: int = 96) -> None:
    """Per type one row: its real shots | few-shot ARAS samples | zero-shot ARAS samples (windows)."""
    from PIL import Image, ImageDraw, ImageFont

    font, pad, label_w = ImageFont.load_default(), 4, 120
    cols = max(len(s) for _, s, _, _ in rows) + 2 * GALLERY_SAMPLES + 2
    sheet = Image.new("RGB", (label_w + cols * (tile + pad), 16 + len(rows) * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in ((0, "real shots"), (max(len(s) for _, s, _, _ in rows) + 1, "few-shot ARAS"),
                     (max(len(s) for _, s, _, _ in rows) + GALLERY_SAMPLES + 2, "zero-shot ARAS")):
        draw.text((label_w + c * (tile + pad), 2), title, fill="black", font=font)
    for r, (t, shots, few, zero) in enumerate(rows):
        y = 16 + r * (tile + pad)
        draw.text((4, y + tile // 2), t, fill="black", font=font)
        cells = [*shots, None, *few, *[None] * (GALLERY_SAMPLES - len(few)), None, *zero]
        for c, win in enumerate(cells):
            if win is None:
                continue
            pic = (np.clip(win.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
            sheet.paste(Image.fromarray(pic).resize((tile, tile), Image.NEAREST), (label_w + c * (tile + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def run_generate(args, key: str, k: int, seed: int) -> dict:
    train, _ = ablation.splits(args, key)
    train_paths = [s.image for s in train]
    real = selection(args, key, k, seed)
    t0 = time.perf_counter()
    fs = fewshot_set(args, key, k, seed, real, train_paths)
    synth_s = time.perf_counter() - t0
    cp = copy_paste_set(args, key, k, seed, real, train_paths)
    paste_s = time.perf_counter() - t0 - synth_s
    gen, rows = generation(args, key, real, model_dir(args, key, k, seed), train_paths)
    gallery = run_dir(args, key, k, seed) / "gallery.png"
    gallery_png(rows, gallery)
    return {"fewshot_set": str(fs), "copy_paste_set": str(cp), "gallery": str(gallery), "generation": gen,
            "synth_s": synth_s, "copy_paste_s": paste_s, "generation_s": time.perf_counter() - t0 - synth_s - paste_s,
            "types": list(real.types), "shots": [d.image for d in real.defects]}


# ---- 3. detectors --------------------------------------------------------------------------
def _concat(a, b):
    """Two searched ViewSets as one pool (their weights kept)."""
    from qarad.detection.views import ViewSet

    cat = lambda x, y: None if x is None or y is None else x + y  # noqa: E731
    return ViewSet(a.features + b.features, a.valid + b.valid, torch.cat([a.source, b.source]),
                   cat(a.targets, b.targets), torch.cat([a.weights, b.weights]),
                   np.concatenate([a.scores, b.scores]), cat(a.dist, b.dist), cat(a.rows, b.rows))


def _subset(items: list, test: list, real) -> tuple[list, list, int]:
    """The test images a selection leaves (and what goes with them), and how many it took out."""
    kept, excluded = real.split(test)
    keep = {str(s.image) for s in kept}
    idx = [i for i, s in enumerate(test) if str(s.image) in keep]
    return [items[i] for i in idx], [test[i] for i in idx], len(excluded)


def run_detectors(args, key: str) -> dict:
    """One bank and cached features shared by every head; per (K, seed) the copy_paste and
    aras_fewshot heads, per seed one zero_shot head, each graded on the seed's remaining test images.
    Finished (K, seed) results are kept in --work, so a rerun trains only the missing heads."""
    from qarad.detection.cached import cache_images
    from qarad.detection.segmenter import Segmenter, SegmenterConfig
    from qarad.detection.train import training_views
    from qarad.detection.views import real_features, sample_weights, synthetic_features
    from qarad.detector_config import QaradTraining
    from qarad.progress import bar
    from qarad.quality.weighting import WeightingConfig

    train, test = ablation.splits(args, key)
    train_paths = [s.image for s in train]
    policy = ablation.policy_of(key)
    zero_folder, _ = ablation.synth_set(args, key, "aras", train_paths)  # MODEL's set, as the ablation's
    ablation.score_set(args, key, zero_folder)
    bank = Segmenter(SegmenterConfig(), policy)  # its backbone embeds; its bank serves every head
    t0 = time.perf_counter()
    # the views `qarad train --synth ZERO_SET` caches (default negatives, QAW linear weights)
    training = QaradTraining(synth=zero_folder, weighting="linear", max_normal_views=MAX_NORMAL_VIEWS,
                             perlin_samples=args.perlin_samples, batch_size=FEATURE_BATCH)
    views = training_views(bank, training, train_paths)
    normal, zero, perlin = views.normal, views.pools["synthetic"], views.pools["perlin"]
    with bar(len(test), f"{key}: features, test") as tick:
        cached = cache_images(bank, [s.image for s in test], FEATURE_BATCH, on_image=tick)
    bank.fit_bank(normal, [zero, perlin])
    shared_s = time.perf_counter() - t0
    done_path = ablation.dataset_dir(args, key) / f"detectors-{_detector_tag(args)}.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    zero_heads: dict[int, Segmenter] = {}

    def head(name: str, seed: int, negatives: tuple, pools: dict) -> tuple[Segmenter, float]:
        config = SegmenterConfig(steps=args.steps, seed=seed, negatives=negatives)
        model = Segmenter(config, policy, bank.backbone)
        with bar(args.steps, f"{key}: {name}, seed {seed}", unit="step") as tick:
            _, fit_s = ablation._timed(model.fit, normal, pools, lambda _: tick(), bank=bank)
        return model, fit_s

    for k in args.shots:
        for seed in args.seeds:
            tag = f"k{k}|s{seed}"
            if tag in done:
                continue
            real = selection(args, key, k, seed)
            gen = args.generated[f"{key}|generate|k{k}|s{seed}"]
            sub_cached, sub_test, n_excluded = _subset(cached, test, real)
            t1 = time.perf_counter()
            shots = real_features(bank, real, FEATURE_BATCH)
            few = synthetic_features(bank, Path(gen["fewshot_set"]), train_paths, FEATURE_BATCH)
            few.weights = sample_weights(few.scores, WeightingConfig(calibration="linear"))
            paste = synthetic_features(bank, Path(gen["copy_paste_set"]), train_paths, FEATURE_BATCH)
            paste.weights = torch.ones(len(paste))
            for pool in (shots, few, paste):
                bank.search(pool)
            pool_s = time.perf_counter() - t1
            if seed not in zero_heads:
                zero_heads[seed] = head("zero_shot", seed, ("synthetic", "perlin"),
                                        {"synthetic": zero, "perlin": perlin})
            arms = {"zero_shot": zero_heads[seed],
                    "copy_paste": head("copy_paste", seed, ("synthetic", "perlin", "real"),
                                       {"synthetic": _concat(zero, paste), "perlin": perlin, "real": shots}),
                    "aras_fewshot": head("aras_fewshot", seed, ("synthetic", "perlin", "real"),
                                         {"synthetic": _concat(zero, few), "perlin": perlin, "real": shots})}
            out = {}
            for name, (model, fit_s) in arms.items():
                ev, eval_s = ablation._timed(ablation.evaluate_cached, model, sub_cached, sub_test)
                out[name] = {**{m: ev[m] for m in METRICS}, "fit_s": fit_s, "eval_s": eval_s}
            done[tag] = {"arms": out, "n_test": len(sub_test), "n_excluded": n_excluded, "pool_s": pool_s,
                         "n_views": {"real": len(shots), "aras_fewshot": len(few), "copy_paste": len(paste),
                                     "zero_shot": len(zero), "perlin": len(perlin), "normal": len(normal)}}
            common.write_json(done_path, done)
    return {"per": done, "shared_s": shared_s, "n_train": len(train), "n_test_all": len(test),
            "bank_rows": len(bank.memory_), "peak_rss_mb": common.peak_rss_mb(), "threads": torch.get_num_threads()}


def _detector_tag(args) -> str:
    settings = {k: getattr(args, k) for k in ("steps", "perlin_samples", "n_synth", "prior_steps", "limit_train",
                                              "limit_test")}
    settings["pools"] = POOLS
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_patchcore(args, key: str) -> dict:
    """PatchCore fitted once; every test image scored once and graded on each (K, seed)'s remaining images."""
    from qarad import metrics as M
    from qarad.detection.evaluate import graded_pair, graded_pixels, summary_metrics
    from qarad.detection.inference import score_images
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig
    from qarad.progress import bar

    train, test = ablation.splits(args, key)
    model = PatchCore(PatchCoreConfig(), ablation.policy_of(key))
    t0 = time.perf_counter()
    with bar(len(train), f"{key}: patchcore fit") as tick:
        model.fit([s.image for s in train], on_image=tick)
    fit_s = time.perf_counter() - t0
    with bar(len(test), f"{key}: patchcore scores") as tick:
        scored = list(score_images(model, [s.image for s in test], FEATURE_BATCH, on_image=tick))
    per = {}
    for k in args.shots:
        for seed in args.seeds:
            res, samples, n_excluded = _subset(scored, test, selection(args, key, k, seed))
            pixels = M.PixelMetrics(streaming=M.streams(graded_pixels(samples, model.policy)))
            for sample, r in zip(samples, res):
                graded, mask = graded_pair(r.layout, r.anomaly_map, sample)
                if mask is not None:
                    pixels.add(M.ImagePixels(graded, mask))
            ev = summary_metrics([r.score for r in res], [s.label for s in samples],
                                 pixels if pixels.n_images else None)
            per[f"k{k}|s{seed}"] = {**{m: ev[m] for m in METRICS}, "n_test": len(samples), "n_excluded": n_excluded}
    return {"per": per, "fit_s": fit_s, "peak_rss_mb": common.peak_rss_mb()}


# ---- results -------------------------------------------------------------------------------
def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None and x == x]
    return float(np.mean(v)) if v else None


def assemble(args, key: str, done: dict) -> tuple[dict, Path | None]:
    det, pc = done[f"{key}|detectors"]["per"], done[f"{key}|patchcore"]["per"]
    out, gallery = {}, None
    for k in args.shots:
        seeds = args.seeds
        gens = [done[f"{key}|generate|k{k}|s{s}"] for s in seeds]
        fits = [done[f"{key}|fit|k{k}|s{s}"] for s in seeds]
        row: dict = {}
        for arm in ARMS:
            runs = [det[f"k{k}|s{s}"]["arms"][arm] for s in seeds]
            r = {}
            for m in METRICS:
                r[m], r[f"{m}_std"] = ablation._mean_std([x[m] for x in runs])
            r["kid"] = _mean([g["generation"][arm]["kid"] for g in gens])
            r["type_top1"] = _mean([g["generation"][arm]["type_top1"] for g in gens])
            r["kid_per_type"] = {t: _mean([g["generation"][arm]["kid_per_type"].get(t) for g in gens])
                                 for t in gens[0]["types"]}
            r["per_seed"] = [{"seed": s, **x, "kid": g["generation"][arm]["kid"],
                              "type_top1": g["generation"][arm]["type_top1"]} for s, x, g in zip(seeds, runs, gens)]
            row[arm] = r
        pcs = [pc[f"k{k}|s{s}"] for s in seeds]
        row["patchcore"] = {**{m: _mean([p[m] for p in pcs]) for m in METRICS}, "per_seed": pcs}
        g0 = gens[0]["generation"]
        row.update(chance=g0["chance"], n_types=g0["n_types"], types=gens[0]["types"],
                   classifier_holdout_top1=_mean([g["generation"].get("classifier_holdout_top1") for g in gens]),
                   n_test=[det[f"k{k}|s{s}"]["n_test"] for s in seeds],
                   n_excluded=[det[f"k{k}|s{s}"]["n_excluded"] for s in seeds],
                   fit_s=_mean([f["fit_s"] for f in fits]), shots=[g["shots"] for g in gens], seeds=list(seeds),
                   n_views=det[f"k{k}|s{seeds[0]}"]["n_views"])
        if "type_top1_note" in g0:
            row["type_top1_note"] = g0["type_top1_note"]
        out[f"k{k}"] = row
        gallery = Path(gens[0]["gallery"])  # the largest K's first seed wins
    return out, gallery


def markdown(env: dict) -> str:
    st = env["settings"]
    smoke = " **Smoke run (--quick): tiny sets, not comparable.**" if st["quick"] else ""
    lines = ["## Few-shot: K real defects per type", "",
             "Command (results: `benchmarks/results/fewshot.json`):", "", f"```sh\n{env['command']}\n```", "",
             f"Run of {env['date']} on {env['machine']}, whole run {env['wall_s'] / 60:.1f} min. Few-shot ARAS: "
             f"`qarad fit --init MODEL --real-defects ... --shots K --prior-steps {st['prior_steps']}`; "
             f"{st['n_synth']} synthetic samples per set, {st['steps']} head steps, {st['n_type']} samples per type "
             f"and generator for KID / type top-1; seeds of the shot choice {', '.join(map(str, st['seeds']))} "
             "(means; detection on the test images that remain)." + smoke, ""]
    head = ("| K | method | image AUROC | pixel AUROC | pixel AP | AUPRO@0.3 | KID (lower better) | type top-1 |")
    for key, res in env["results"].items():
        lines += [f"### `{key}`", "", head, "|" + "---|" * 8]
        for kk, row in res.items():
            for arm in ("patchcore", *ARMS):
                r = row[arm]
                f = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
                lines.append(f"| {kk[1:]} | {arm} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | "
                             f"{f(r['pixel_ap'])} | {f(r['aupro'])} | {f(r.get('kid'))} | {f(r.get('type_top1'))} |")
        row = next(iter(res.values()))
        judge = row["classifier_holdout_top1"]
        lines += ["", f"Types: {', '.join(row['types'])}; type top-1 chance {row['chance']:.2f}"
                  + (f", the classifier's own top-1 on held-out real defects {judge:.3f}." if judge is not None
                     else f" ({row.get('type_top1_note', 'no classifier')}).")
                  + " KID and type top-1 of `zero_shot` are MODEL's samples prompted with the type name, of "
                  "`copy_paste` the shots pasted (real pixels).", ""]
        if env.get("galleries", {}).get(key):
            lines += [f"![few-shot gallery, {key}]({env['galleries'][key]})", ""]
    return "\n".join(lines).rstrip()


# ---- driver --------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--models", action="append", default=[], metavar="DATASET=MODEL_DIR",
                    help="the fitted ARAS model (qarad fit) of a dataset, continued by every few-shot fit")
    ap.add_argument("--shots", nargs="+", type=int, help="K values (default 1 5; --quick: 1)")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds of the shot choice (default 0 1 2; --quick: 0)")
    ap.add_argument("--prior-steps", type=int, help="few-shot prior steps past MODEL's (default 400)")
    ap.add_argument("--n-synth", type=int, help="samples per synthetic set (default 300)")
    ap.add_argument("--n-type", type=int, help="samples per type and generator for KID / type top-1 (default 20)")
    ap.add_argument("--n-real", type=int, help="held-out real defects per type, at most (default 100)")
    ap.add_argument("--steps", type=int, help="head training steps (default 1000, as qarad train)")
    ap.add_argument("--perlin-samples", type=int, help="Perlin patches (default 200, as qarad train)")
    ap.add_argument("--limit-train", type=int, help="smoke runs only: at most N normal train images")
    ap.add_argument("--limit-test", type=int, help="smoke runs only: N test images, half defective")
    ap.add_argument("--quick", action="store_true", help="smoke run: every size small (module docstring)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="few-shot models, synthetic sets, heads")
    ap.add_argument("--out-json", type=Path, default=None,
                    help="default benchmarks/results/fewshot.json (--quick: WORK/fewshot_quick.json)")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--fresh", action="store_true", help="ignore finished stages of an earlier run")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DATASET"), help=argparse.SUPPRESS)
    return ap


def parse_args(argv: list[str]):
    ap = parser()
    args = ap.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    models = {}
    for item in args.models:
        key, sep, path = item.partition("=")
        if not sep or key not in DATASETS:
            ap.error(f"--models {item!r}: expected DATASET=MODEL_DIR with DATASET one of {', '.join(DATASETS)}")
        if not (Path(path) / "aras.json").is_file():
            ap.error(f"--models {item!r}: {path} is not an ARAS model folder (no aras.json); fit one with `qarad fit`")
        models[key] = Path(path).resolve()
    args.models, args.work = models, args.work.resolve()
    if min([*args.shots, args.prior_steps, args.n_synth, args.n_type, args.n_real, args.steps]) < 1:
        ap.error("--shots, --prior-steps, --n-synth, --n-type, --n-real and --steps must be positive")
    if args.quick or args.limit_train or args.limit_test:  # a child finds the partial file where its parent keeps it
        args.no_markdown = True
        if args.out_json is None:
            args.out_json = args.work / "fewshot_quick.json"
        elif args.out_json.resolve().parent == common.RESULTS.resolve():
            ap.error("smoke runs (--quick, --limit-*) write their JSON outside benchmarks/results")
    return args


def _stage_settings(args, key: str, stage: str) -> dict:
    base = {"data": str(args.data.resolve()), "model": str(args.models[key]), "limit_train": args.limit_train,
            "limit_test": args.limit_test, "prior_steps": args.prior_steps}
    if stage.startswith("fit"):
        return base
    if stage.startswith("generate"):
        return {**base, "n_synth": args.n_synth, "n_type": args.n_type, "n_real": args.n_real, "pools": POOLS}
    if stage == "patchcore":
        return {**base, "shots": args.shots, "seeds": args.seeds}
    return {**base, "shots": args.shots, "seeds": args.seeds, "n_synth": args.n_synth, "steps": args.steps,
            "perlin_samples": args.perlin_samples, "pools": POOLS}


def stages(args, key: str) -> list[str]:
    fits = [f"fit|k{k}|s{s}" for k in args.shots for s in args.seeds]
    gens = [f"generate|k{k}|s{s}" for k in args.shots for s in args.seeds]
    return [*fits, *gens, "detectors", "patchcore"]


def child(args, stage: str, key: str) -> dict:
    kind, *rest = stage.split("|")
    if kind in ("fit", "generate"):
        k, seed = int(rest[0][1:]), int(rest[1][1:])
        return (run_fit if kind == "fit" else run_generate)(args, key, k, seed)
    if kind == "detectors":
        partial = json.loads(args.partial.read_text())["done"]
        args.generated = {tag: entry for tag, entry in partial.items() if "|generate|" in tag}
        return run_detectors(args, key)
    return run_patchcore(args, key)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out_json = args.out_json or common.RESULTS / "fewshot.json"
    args.partial = out_json.with_name(out_json.stem + ".partial.json")
    if args.child:
        stage, key = args.child
        print(json.dumps(child(args, stage, key)))
        return
    partial = {} if args.fresh or not args.partial.exists() else json.loads(args.partial.read_text())
    done = partial.get("done", {})
    results, galleries, t_start = {}, {}, time.perf_counter()
    for key in args.datasets:
        if not common.available(args.data, key):
            print(f"skip {key}: not found under {args.data}", file=sys.stderr)
            continue
        if key not in args.models:
            print(f"skip {key}: no --models {key}=MODEL_DIR (the few-shot fits continue a fitted model)",
                  file=sys.stderr)
            continue
        for stage in stages(args, key):
            tag = f"{key}|{stage}"
            wanted = json.loads(json.dumps(_stage_settings(args, key, stage)))
            if done.get(tag, {}).get("settings") != wanted:
                print(f"== {key}: {stage}", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                result = common.run_child([*argv, "--child", stage, key])
                done[tag] = {**result, "wall_s": time.perf_counter() - t0, "settings": wanted}
                common.write_json(args.partial, {"done": done})
        results[key], gallery = assemble(args, key, done)
        if gallery is not None and gallery.is_file():
            slug = key.split("/")[0]
            target = (common.RESULTS if not args.quick else out_json.parent) / f"fewshot_gallery_{slug}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gallery, target)
            try:
                galleries[key] = target.resolve().relative_to(common.ROOT).as_posix()
            except ValueError:
                galleries[key] = str(target)
    if not results:
        print("nothing to do: no dataset with a model found", file=sys.stderr)
        return
    env = common.envelope(results)
    env["wall_s"] = sum(v["wall_s"] for tag, v in done.items() if tag.split("|")[0] in results)
    env["this_run_wall_s"] = time.perf_counter() - t_start
    env["galleries"] = galleries
    env["settings"] = {k: getattr(args, k) for k in ("shots", "seeds", "prior_steps", "n_synth", "n_type", "n_real",
                                                      "steps", "perlin_samples", "limit_train", "limit_test", "quick")}
    env["settings"].update(models={k: str(v) for k, v in args.models.items()}, work=str(args.work))
    common.publish(out_json, env, "fewshot", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
