"""Ablation: PatchCore against the QARAD detector and its variants, per dataset.

    python benchmarks/ablation.py --models magnetic_tile/magnetic_tile=benchmarks/models/magnetic_tile
        [--models KEY=MODEL_DIR ...] [--datasets KEY ...] [--seeds 0 1 2] [--n-synth 300] [--work DIR]
        [--backbone efficientnet-lite0|efficientnet-lite2]

Dataset keys are those of benchmarks/common.py plus `deeppcb/deeppcb@tile` (DeepPCB under the
tile policy at scale 1, where PatchCore is strongest on it); every other key runs at `resize` 256.
Methods, all with the same backbone (--backbone, default Lite0: the PatchCore rows and every head),
policy, normal images (common.TRAIN_LIMIT) and seeds:
  patchcore            memory bank, no synthesis, the default (IVF) nearest-neighbour search
  patchcore_exact      the same bank searched exactly (the IVF search's metric change)
  qarad                exactly what `qarad train --method qarad` does by default: ARAS samples with
                       QAW (linear) weights + Perlin texture patches; the head reads features, residuals
                       to the bank and distances; map fused with the distance
  qarad_aras_uniform   ... ARAS samples with uniform weights
  qarad_aras_only      ... ARAS (QAW) negatives only
  qarad_perlin_only    ... Perlin negatives only (what a user without an ARAS model gets)
  qarad_feature_only   ... feature-space negatives only (noise inside random blobs of cells)
  qarad_no_residual    ... head on frozen features only (the old head's inputs), fused
  qarad_no_fusion      ... map = head probability alone
A dataset without a --models entry runs no method that needs ARAS samples ("skipped").
To compare backbones, run once per --backbone with its own --out-json (the ARAS set in --work is
shared: it does not depend on the detector's backbone).

Cost control: per dataset, the ARAS set is made once into --work (resumable), backbone features of
the normal, synthetic, Perlin and test images are computed once, the memory bank is built and every
training cell searched once (shared by all heads: it depends on the normal images only), and only
the head is trained per method and seed (`Segmenter.fit(..., bank=)`, the fit `qarad train` runs, on
the shared bank); heads are scored on the cached test features with `detection.cached.score_cached`,
which gives the maps and scores `score_images` gives. PatchCore,
the detectors and the speed check each run in their own process (peak RSS their own); finished
stages are kept in OUT.partial.json (git-ignored), so an interrupted or extended run (more
--datasets with the same settings) reuses them.

Writes benchmarks/results/ablation.json: results[dataset][method] holds the metric keys of
detect.json as means over seeds plus <metric>_std (sample std, ddof 1), fit_s (head training;
PatchCore: its whole fit), test_images_per_s, peak_rss_mb and per_seed; results[dataset] also
holds backbone_images_per_s, "shared" (synthesis, QAW scoring, feature caching, bank, wall times)
and "skipped" (methods not run and why). Also refreshes the "ablation" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detect import METRICS  # noqa: E402

from qarad.backbone_config import BACKBONES, DETECTOR_BACKBONE, LEGACY_BACKBONE  # noqa: E402

SIZE = 256  # resize policy side, every method
DEFAULT = ("synthetic", "perlin")  # as SegmenterConfig.negatives
VARIANTS = {  # method -> (negatives, QAW calibration of the ARAS samples, residual inputs, fusion)
    "qarad": (DEFAULT, "linear", True, True),
    "qarad_aras_uniform": (DEFAULT, "none", True, True),
    "qarad_aras_only": (("synthetic",), "linear", True, True),
    "qarad_perlin_only": (("perlin",), "linear", True, True),
    "qarad_feature_only": (("feature",), "linear", True, True),
    "qarad_no_residual": (DEFAULT, "linear", False, True),
    "qarad_no_fusion": (DEFAULT, "linear", True, False),
}
PATCHCORES = ("patchcore", "patchcore_exact")
NO_MODEL = "not run (no ARAS model)"
TILE_SUFFIX = "@tile"
STAGES = ("patchcore", "patchcore_exact", "detectors", "speed")
SYNTH_SEED = 0  # the synthetic sets are made once per dataset and shared by every seed
MAX_ATTEMPTS = 5  # redraws of a sample whose change came out empty (it would teach the head nothing)
MAX_NORMAL_VIEWS = 4000  # as `qarad train --max-normal-views`
FEATURE_BATCH = 8
N_WARMUP, N_SPEED = 3, 50  # inference speed: images scored untimed, then timed
DEFAULT_WORK = Path(__file__).resolve().parent / "models" / "ablation-work"  # git-ignored
TILE_MEMORY_LIMIT = 16384  # bank rows under @tile, as benchmarks/detect.py's tile rows: uncapped, DeepPCB's
# 2,700 tiles give a 270k-row bank whose exact search alone takes hours
TIMING = "ablation_timing.json"  # seconds spent making / scoring a synthetic set, kept across resumes


# ---- data ----------------------------------------------------------------------------------
def splits(args, key: str) -> tuple[list, list]:
    """(train, test) samples: common.TRAIN_LIMIT normal images; --limit-* shrink both (smoke runs)."""
    from qarad.data.layouts import scan
    from qarad.data.mvtec import subsample

    base = key.removesuffix(TILE_SUFFIX)
    root, cat = common.DATASETS[base]
    limits = [n for n in (common.TRAIN_LIMIT.get(base), args.limit_train) if n is not None]
    train = subsample(scan(args.data / root, cat, "train", "mvtec"), min(limits) if limits else None, seed=0)
    test = scan(args.data / root, cat, "test", "mvtec")
    if args.limit_test is not None:  # half normal, half defective, in scan order
        good, bad = [s for s in test if s.label == 0], [s for s in test if s.label == 1]
        k = args.limit_test // 2
        keep = {s.image for s in subsample(good, k) + subsample(bad, args.limit_test - k)}
        test = [s for s in test if s.image in keep]
    return train, test


def policy_of(key: str):
    from qarad.data.resolution import ResolutionPolicy

    if key.endswith(TILE_SUFFIX):  # as benchmarks/detect.py's tile rows: native pixels, 256 tiles
        return ResolutionPolicy(mode="tile", size=SIZE, scale=1.0, overlap=64)
    return ResolutionPolicy(mode="resize", size=SIZE)


def memory_limit(key: str) -> int | None:
    return TILE_MEMORY_LIMIT if key.endswith(TILE_SUFFIX) else None


def stages_of(key: str) -> tuple[str, ...]:
    """The exact search is skipped under @tile (~9,000 test tiles against the bank: the longest stage
    of the run); the IVF search's metric change is measured on the resize keys."""
    return tuple(s for s in STAGES if not (key.endswith(TILE_SUFFIX) and s == "patchcore_exact"))


def _model_of(models: dict, key: str):
    """The ARAS model `models` (--models, as paths or as the settings' strings) gives a dataset; an
    @tile key not named there shares the plain key's (a model fitted under the tile policy draws at
    native pixels, as the tile detector sees them)."""
    return models.get(key, models.get(key.removesuffix(TILE_SUFFIX)))


def model_for(args, key: str) -> Path | None:
    return _model_of(args.models, key)


def dataset_dir(args, key: str) -> Path:
    return args.work / key.replace("/", "__")


def speed_head_path(args, key: str) -> Path:
    return dataset_dir(args, key) / f"speed_head_{args.backbone}"  # one per backbone: runs may share --work


# ---- synthesis -----------------------------------------------------------------------------
def _draw(image: np.ndarray, fg: np.ndarray, family: str, key: list[int], aras):
    """One ARAS sample -> (image, changed pixels, prompt); it replays the procedural baseline's draws
    (parameters, prompt, mask) from an identically seeded generator, as benchmarks/synthesis.py."""
    from synthesis import draw_prompt, family_mask

    rng = np.random.default_rng(key)
    params, prompt = draw_prompt(rng, image, family)
    mask = family_mask(rng, (image, fg), params)
    out = aras.synthesize(image, mask, prompt, int(np.random.default_rng(key + [1]).integers(2**31)))
    return out.image, out.mask, prompt


def _maker(method: str, aras):
    from qarad.defects.masks import foreground_mask
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.jobs import Made

    def make(image, user_mask, job):
        fg = foreground_mask(image)
        family = FAMILIES[job.id % len(FAMILIES)]  # families in turn
        for attempt in range(MAX_ATTEMPTS):
            out, changed, prompt = _draw(image, fg, family, [job.seed, attempt], aras)
            if changed.any():
                extra = {"attempts": attempt + 1, "family": family}
                return Made(out, changed, prompt, extra)
        raise RuntimeError(f"{job.source}: {MAX_ATTEMPTS} {method} samples in a row changed no pixel (sample {job.id})")

    return make


def _timing(folder: Path) -> dict:
    path = folder / TIMING
    return json.loads(path.read_text()) if path.is_file() else {"synth_s": 0.0, "score_s": None}


def synth_set(args, key: str, method: str, train_paths: list[Path]) -> tuple[Path, dict]:
    """Make (or finish) the n-synth samples of one method; -> (folder, timing)."""
    from qarad.progress import bar
    from qarad.synthesis import jobs

    settings = {"method": method, "images": [str(p) for p in train_paths], "n": args.n_synth, "seed": SYNTH_SEED,
                "max_attempts": MAX_ATTEMPTS}
    aras = None
    if method == "aras":
        from qarad.synthesis.aras import SamplerConfig
        from qarad.synthesis.pipeline import ARAS

        model_dir = model_for(args, key).resolve()
        settings.update(model=str(model_dir), sampler=asdict(SamplerConfig()))
        aras = ARAS.load(model_dir)
    settings = json.loads(json.dumps(settings))  # as it reads back from synth.json
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = dataset_dir(args, key) / f"{method}-n{args.n_synth}-{tag}"  # other settings, other folder
    jobs.prepare_output(folder, settings)
    work = jobs.plan(train_paths, ["(drawn per sample)"], None, args.n_synth, SYNTH_SEED)
    timing = _timing(folder)
    t0 = time.perf_counter()
    with bar(len(work), f"{key}: synth {method}", unit="sample") as tick:
        jobs.run(work, _maker(method, aras), folder, method, settings, on_done=tick)
    timing["synth_s"] += time.perf_counter() - t0  # a resumed set adds to the time already spent
    common.write_json(folder / TIMING, timing)
    return folder, timing


def score_set(args, key: str, folder: Path) -> dict:
    """QAW scores into the ARAS set's manifest (once: a scored set is not scored again)."""
    from qarad.progress import bar
    from qarad.synthesis.scoring import score_folder
    from qarad.synthesis import model as aras_model
    from qarad.synthesis.jobs import MANIFEST, read_manifest

    timing = _timing(folder)
    entries = read_manifest(folder / MANIFEST)
    if timing["score_s"] is not None and all(e.get("score") is not None for e in entries):
        return timing
    model_dir = model_for(args, key)
    model = aras_model.read_config(model_dir)
    scorer = aras_model.load_dual_encoder(model_dir)
    t0 = time.perf_counter()
    with bar(len(entries), f"{key}: QAW scores", unit="sample") as tick:
        score_folder(folder, scorer, model.policy, model.fit.window_rule, on_sample=tick)
    timing["score_s"] = time.perf_counter() - t0
    common.write_json(folder / TIMING, timing)
    return timing


# ---- detectors on cached features ----------------------------------------------------------
def evaluate_cached(head, cached: list, test: list) -> dict:
    """Metrics exactly as evaluate() grades them (same map/mask pairing, same metric function)."""
    from qarad import metrics as M
    from qarad.detection.evaluate import graded_pair, graded_pixels, summary_metrics
    from qarad.detection.cached import score_cached

    pixels = M.PixelMetrics(streaming=M.streams(graded_pixels(test, head.policy)))
    scores = []
    for sample, c, (m, score) in zip(test, cached, score_cached(head, cached)):
        graded, mask = graded_pair(c.layout, m, sample)
        if mask is not None:
            pixels.add(M.ImagePixels(graded, mask))
        scores.append(score)
    return summary_metrics(scores, [s.label for s in test], pixels if pixels.n_images else None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def cache_features(args, key: str, embedder, train_paths: list[Path], test: list) -> tuple[dict, dict, list]:
    """Normal, ARAS (if a model is given), Perlin and test features, each once; -> (views, seconds, cached)."""
    from qarad.detection.cached import cache_images
    from qarad.detection.views import normal_features, perlin_features, synthetic_features
    from qarad.progress import bar

    views, seconds = {}, {}
    with bar(len(train_paths), f"{key}: features, normal") as tick:
        views["normal"], seconds["normal"] = _timed(normal_features, embedder, train_paths, FEATURE_BATCH,
                                                    MAX_NORMAL_VIEWS, seed=0, on_image=tick)
    if model_for(args, key) is not None:
        folder = args.synth_folder
        with bar(args.n_synth, f"{key}: features, aras") as tick:
            views["synthetic"], seconds["synthetic"] = _timed(synthetic_features, embedder, folder, train_paths,
                                                              FEATURE_BATCH, on_image=tick)
    with bar(args.perlin_samples, f"{key}: Perlin patches + features") as tick:
        views["perlin"], seconds["perlin"] = _timed(perlin_features, embedder, train_paths, args.perlin_samples,
                                                    0, FEATURE_BATCH, on_image=tick)
    with bar(len(test), f"{key}: features, test") as tick:
        cached, seconds["test"] = _timed(cache_images, embedder, [s.image for s in test], FEATURE_BATCH,
                                         on_image=tick)
    return views, seconds, cached


def _pools(views: dict, calibration: str) -> dict:
    """The defect pools one variant trains on; ARAS views get that variant's QAW weights."""
    from dataclasses import replace

    from qarad.detection.views import sample_weights
    from qarad.quality.weighting import WeightingConfig

    pools = {"perlin": views["perlin"]}
    if "synthetic" in views:
        w = sample_weights(views["synthetic"].scores, WeightingConfig(calibration=calibration))
        pools["synthetic"] = replace(views["synthetic"], weights=w)
    return pools


def run_detectors(args, key: str) -> dict:
    """ARAS set, feature caching, one shared bank, then one head per (method, seed) on cached test features."""
    from qarad.detection.cached import search_cached
    from qarad.detection.segmenter import Segmenter, SegmenterConfig
    from qarad.progress import bar

    train, test = splits(args, key)
    train_paths = [s.image for s in train]
    policy = policy_of(key)
    synth_timing = None
    if model_for(args, key) is not None:
        args.synth_folder, synth_timing = synth_set(args, key, "aras", train_paths)
        synth_timing = score_set(args, key, args.synth_folder)
    bank = Segmenter(SegmenterConfig(backbone=args.backbone, memory_limit=memory_limit(key)),
                     policy)  # its backbone embeds; its bank serves every head
    views, features_s, cached = cache_features(args, key, bank, train_paths, test)
    _, bank_s = _timed(bank.fit_bank, views["normal"], [v for k, v in views.items() if k != "normal"])
    cached, test_search_s = _timed(search_cached, bank, cached)  # once, for every head on this bank

    methods, skipped, speed_head, speed_method = {}, {}, speed_head_path(args, key), None
    for name, (negatives, calibration, residual, fusion) in VARIANTS.items():
        if name not in args.methods:
            skipped[name] = "not asked for (--methods)"
            continue
        if "synthetic" in negatives and "synthetic" not in views:
            skipped[name] = NO_MODEL
            continue
        pools, runs = _pools(views, calibration), []
        for seed in args.seeds:
            config = SegmenterConfig(steps=args.steps, seed=seed, negatives=negatives, residual=residual,
                                     fusion=fusion, backbone=args.backbone, memory_limit=memory_limit(key))
            head = Segmenter(config, policy, bank.backbone)
            with bar(args.steps, f"{key}: {name}, seed {seed}", unit="step") as tick:  # what `qarad train` fits
                _, fit_s = _timed(head.fit, views["normal"], pools, lambda _: tick(), bank=bank)
            ev, eval_s = _timed(evaluate_cached, head, cached, test)
            runs.append({"seed": seed, **{m: ev[m] for m in METRICS}, "fit_s": fit_s, "eval_s": eval_s,
                         "threshold": head.threshold_})
            if not methods and len(runs) == 1:  # the first variant trained (qarad when it runs) serves the speed check
                head.save(speed_head)
                speed_method = name
        out = {}
        for m in (*METRICS, "fit_s"):
            out[m], out[f"{m}_std"] = _mean_std([r[m] for r in runs])
        used = ["normal", *[k for k in ("synthetic", "perlin") if k in negatives]]
        out.update(n_train=len(train), n_test=len(test), n_normal_views=len(views["normal"]),
                   negatives=list(negatives), weighting=calibration, residual=residual, fusion=fusion,
                   # what `qarad train` with these settings takes: features, bank + search, head
                   train_s=sum(features_s[k] for k in used) + bank_s + out["fit_s"], seeds=list(args.seeds),
                   per_seed=runs)
        methods[name] = out
    return {"methods": methods, "skipped": skipped, "speed_head": str(speed_head), "speed_method": speed_method,
            "features_s": features_s,
            "bank_s": bank_s, "test_search_s": test_search_s, "bank_rows": len(bank.memory_),
            "synth": None if synth_timing is None else {**synth_timing, "folder": str(args.synth_folder),
                                                        "n": args.n_synth},
            "n_train": len(train), "n_test": len(test), "peak_rss_mb": common.peak_rss_mb(),
            "threads": torch.get_num_threads()}


def _embed_all(embedder, views: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for s in range(0, len(views), batch):
            embedder(views[s:s + batch])


def run_speed(args, key: str) -> dict:
    """Images/s of the default head end to end (decode included) and of the backbone alone, same run."""
    from qarad.backbone import PatchEmbedder
    from qarad.data.stream import load
    from qarad.detection.inference import score_images
    from qarad.detection.segmenter import Segmenter

    _, test = splits(args, key)
    paths = [s.image for s in test][: N_WARMUP + N_SPEED]
    warm, timed = paths[: min(N_WARMUP, len(paths) - 1)], paths[min(N_WARMUP, len(paths) - 1):]
    model = Segmenter.load(speed_head_path(args, key))
    for _ in score_images(model, warm, args.speed_batch):  # loads the backbone, first-call allocations
        pass
    t0 = time.perf_counter()
    n = sum(1 for _ in score_images(model, timed, args.speed_batch))  # decode, views, backbone, search, head
    end_to_end = n / (time.perf_counter() - t0)
    views = torch.cat([load(i, p, model.policy).views for i, p in enumerate(timed)])
    onnx = model._embedder()  # warmed up by the end-to-end run
    eager = PatchEmbedder(onnx.backbone, "torch")
    _embed_all(eager, views[:args.speed_batch], args.speed_batch)
    backbone = {runtime: n / _timed(_embed_all, embedder, views, args.speed_batch)[1]
                for runtime, embedder in (("onnxruntime", onnx), ("torch", eager))}
    return {"test_images_per_s": end_to_end, "backbone_images_per_s": backbone["onnxruntime"],
            "backbone_torch_images_per_s": backbone["torch"], "n_images": n,
            "n_views": len(views), "batch_size": args.speed_batch, "peak_rss_mb": common.peak_rss_mb(),
            "threads": torch.get_num_threads()}


def run_patchcore(args, key: str, search: str = "ivf") -> dict:
    from qarad.detection.evaluate import evaluate
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig
    from qarad.progress import bar

    train, test = splits(args, key)
    config = PatchCoreConfig(search=search, batch_size=args.speed_batch,  # 10% coreset, capped under @tile
                             backbone=args.backbone, memory_limit=memory_limit(key))
    model = PatchCore(config, policy_of(key))
    t0 = time.perf_counter()
    with bar(len(train), f"{key}: patchcore fit ({search})") as tick:
        model.fit([s.image for s in train], on_image=tick)
    fit_s = time.perf_counter() - t0
    with bar(len(test), f"{key}: patchcore eval ({search})") as tick:
        ev = evaluate(model, test, args.speed_batch, on_image=tick)
    out = {}
    for m in METRICS:
        out[m], out[f"{m}_std"] = ev.overall[m], 0.0
    out.update(fit_s=fit_s, fit_s_std=0.0, test_images_per_s=ev.images_per_s, peak_rss_mb=common.peak_rss_mb(),
               n_train=len(train), n_test=len(test), memory_rows=int(len(model.memory_)), seeds=[config.seed],
               search=search, note="deterministic: one run with coreset seed 0; the std is 0 by construction",
               threads=torch.get_num_threads())
    return out


# ---- results -------------------------------------------------------------------------------
def assemble(key: str, done: dict) -> dict:
    det, speed = done[f"{key}|detectors"], done[f"{key}|speed"]
    res = {name: {k: v for k, v in done[f"{key}|{name}"].items() if k != "settings"} for name in PATCHCORES
           if name in stages_of(key)}
    for name, r in det["methods"].items():
        res[name] = {**r, "peak_rss_mb": det["peak_rss_mb"], "infer_peak_rss_mb": speed["peak_rss_mb"],
                     # the one measured head is the default's; the variants cost the same at test time
                     # (no_residual skips one gather of bank rows)
                     "test_images_per_s": speed["test_images_per_s"]}
    if det["skipped"]:
        res["skipped"] = det["skipped"]
    res["backbone_images_per_s"] = speed["backbone_images_per_s"]
    res["shared"] = {"synth": det["synth"], "features_s": det["features_s"], "bank_s": det["bank_s"],
                     "speed_method": det["speed_method"],
                     "bank_rows": det["bank_rows"], "speed": speed, "n_train": det["n_train"],
                     "n_test": det["n_test"], "wall_s": {s: done[f"{key}|{s}"]["wall_s"] for s in stages_of(key)}}
    return res


def _cells(r: dict, spread: bool) -> list[str]:
    cells = [f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if spread else f"{r[m]:.3f}" for m in METRICS]
    return cells + [f"{r['fit_s']:.0f}", f"{r['test_images_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]


def table(key: str, res: dict) -> str:
    head = ("| method | image AUROC | image AP | image F1max | pixel AUROC | pixel AP | pixel F1max | AUPRO@0.3 "
            "| fit s | test img/s | peak RSS MB |")
    sh = res["shared"]
    lines = [f"### `{key}` ({sh['n_train']} normal train images, {sh['n_test']} test images)", "", head,
             "|" + "---|" * 11]
    for name in PATCHCORES:
        if name in res:
            lines.append(f"| {name} ({res[name]['search']} search, 1 run) | " + " | ".join(_cells(res[name], False))
                         + " |")
        else:
            lines.append(f"| {name} | not run under @tile (see `stages_of`) |" + " |" * 9)
    for name in VARIANTS:
        if name in res:
            lines.append(f"| {name} | " + " | ".join(_cells(res[name], len(res[name]["seeds"]) > 1)) + " |")
        else:
            lines.append(f"| {name} | {res['skipped'][name]} |" + " |" * 9)
    synth = sh["synth"]
    made = (f"ARAS synthesis of {synth['n']} samples {synth['synth_s']:.0f} s + QAW scoring "
            f"{synth['score_s']:.0f} s; " if synth else "")
    feats = ", ".join(f"{k} {v:.0f} s" for k, v in sh["features_s"].items())
    default = sh["speed_method"]  # qarad, or qarad_perlin_only where no ARAS model was given
    wall = sum(sh["wall_s"].values())
    lines += ["", f"Once per dataset: {made}features ({feats}); memory bank ({sh['bank_rows']} rows) and the "
              f"search of every training cell {sh['bank_s']:.0f} s. `qarad train` with the {default} settings "
              f"(features + bank + head) would take {res[default]['train_s'] / 60:.1f} min. Speed (batch "
              f"{sh['speed']['batch_size']}, {sh['speed']['n_images']} test images, same process): {default} end "
              f"to end {sh['speed']['test_images_per_s']:.1f} img/s, backbone alone "
              f"{res['backbone_images_per_s']:.1f} img/s (onnxruntime; eager torch "
              f"{sh['speed'].get('backbone_torch_images_per_s', float('nan')):.1f} img/s). "
              f"Dataset wall time {wall / 60:.1f} min."]
    return "\n".join(lines)


def _backbone_name(settings: dict) -> str:
    name = settings.get("backbone", DETECTOR_BACKBONE)  # results written before the setting: Lite0
    return "EfficientNet-" + name.removeprefix("efficientnet-").capitalize()


def markdown(env: dict) -> str:
    results, st = env["results"], env["settings"]
    smoke = st["limit_train"] or st["limit_test"]
    limited = " **Smoke run: train/test subsets limited, not comparable.**" if smoke else ""
    lines = [
        "## Ablation: PatchCore vs the QARAD detector and its variants", "",
        "Command (results: `benchmarks/results/ablation.json`; a dataset made by an earlier run kept with "
        "`--merge` names its own command under its table):", "",
        f"```sh\n{env['command']}\n```", "",
        f"Run of {env['date']} on {env['machine']}; {env['wall_s'] / 60:.1f} min of stages for every table below "
        "(resumes included, earlier runs' tables too).", "",
        f"Settings: `resize` 256 (`@tile`: 256 tiles at scale 1), {_backbone_name(st)} stride 8 + 16 features, "
        f"the normal train images of benchmarks/detect.py; {st['n_synth']} ARAS samples, "
        f"{st['perlin_samples']} Perlin patches, {st['steps']} head steps, seeds "
        f"{', '.join(map(str, st['seeds']))}; detector rows are mean ± sample std over the seeds (head "
        "initialisation, batches, feature-space negatives and held-out normals; the ARAS and Perlin sets, "
        "the features and the memory bank are made once per dataset and shared by every seed and "
        "variant). PatchCore is deterministic: one run, no spread. *fit s*: PatchCore's whole fit; "
        "detectors: head training and calibration on cached, searched features. *test img/s*: PatchCore's "
        "evaluation loop; detectors: the full scoring path (decode, views, backbone, search, head, "
        "smoothing) of the default head on up to 50 test images. *peak RSS*: PatchCore's own process; "
        "detectors: the one process that cached all features and trained every head." + limited, "",
    ]
    for key, res in results.items():
        run = res.get("run")
        made_by = ([f"Made by `{run['command']}` ({run['date']}, {run['machine']}).", ""]
                   if run and run["command"] != env["command"] else [])
        lines += [table(key, res), "", *made_by]
    return "\n".join(lines).rstrip()


# ---- driver --------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    keys = [*common.DATASETS, "deeppcb/deeppcb" + TILE_SUFFIX]
    ap.add_argument("--datasets", nargs="*", default=keys, choices=keys)
    ap.add_argument("--models", action="append", default=[], metavar="DATASET=MODEL_DIR",
                    help="fitted ARAS model (qarad fit) for a dataset; repeat per dataset")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-synth", type=int, default=300, help="ARAS samples per dataset")
    ap.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="detector variants to train (PatchCore always runs)")
    ap.add_argument("--perlin-samples", type=int, default=200, help="Perlin patches per dataset (as qarad train)")
    ap.add_argument("--steps", type=int, default=1000, help="head training steps (default: as qarad train)")
    ap.add_argument("--backbone", choices=list(BACKBONES), default=DETECTOR_BACKBONE,
                    help="the detectors' backbone, as qarad train --backbone (PatchCore rows and every head)")
    ap.add_argument("--speed-batch", type=int, default=8, help="backbone batch size for evaluation and speed")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="synthetic sets and the speed-check head")
    ap.add_argument("--limit-train", type=int, default=None, help="smoke runs only: at most N normal train images")
    ap.add_argument("--limit-test", type=int, default=None, help="smoke runs only: N test images, half defective")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--out-json", type=Path, default=None, help="default benchmarks/results/ablation.json")
    ap.add_argument("--fresh", action="store_true", help="ignore results of an interrupted earlier run")
    ap.add_argument("--merge", action="store_true",
                    help="keep the datasets of --out-json that this run does not redo (same settings only); "
                         "each dataset's table names the run that made it")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DATASET"), help=argparse.SUPPRESS)
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: list[str]):
    args = ap.parse_args(argv)
    models = {}
    for item in args.models:
        key, sep, path = item.partition("=")
        if not sep or key.removesuffix(TILE_SUFFIX) not in common.DATASETS:
            ap.error(f"--models {item!r}: expected DATASET=MODEL_DIR with DATASET one of {', '.join(common.DATASETS)}")
        if not (Path(path) / "aras.json").is_file():
            ap.error(f"--models {item!r}: {path} is not an ARAS model folder (no aras.json); fit one with `qarad fit`")
        models[key] = Path(path)
    args.models = models
    args.work = args.work.resolve()
    if min([args.n_synth, args.steps, *[n for n in (args.limit_train, args.limit_test) if n is not None]]) < 1:
        ap.error("--n-synth, --steps and --limit-* must be positive")
    if (args.limit_train or args.limit_test) and not args.child and (args.out_json is None or not args.no_markdown):
        ap.error("--limit-train/--limit-test are for smoke runs: also pass --no-markdown and an --out-json "
                 "outside benchmarks/results")
    return args


COMMON_SETTINGS = ("data", "limit_train", "limit_test")
DETECTOR_SETTINGS = ("seeds", "n_synth", "steps", "work", "perlin_samples", "methods")


def _stage_settings(settings: dict, key: str, stage: str) -> dict:
    """What one stage of one dataset depends on, so that a later run with more datasets, models or
    another evaluation batch reuses every finished stage it does not change."""
    from qarad.detection.patchcore import PatchCoreConfig

    out = {k: settings[k] for k in COMMON_SETTINGS}
    out["backbone"] = settings.get("backbone", LEGACY_BACKBONE)  # runs before the setting: Lite0
    if stage in PATCHCORES:  # PatchCore's defaults (its search) are part of what it measured
        return {**out, "speed_batch": settings["speed_batch"],
                "patchcore": asdict(PatchCoreConfig(memory_limit=memory_limit(key)))}
    out.update({k: settings[k] for k in DETECTOR_SETTINGS}, model=_model_of(settings["models"], key))
    if memory_limit(key) is not None:  # absent for the resize keys: their finished stages stay reusable
        out["memory_limit"] = memory_limit(key)
    return out if stage == "detectors" else {**out, "speed_batch": settings["speed_batch"]}


def _reusable(partial: dict) -> dict:
    """Finished stages of an earlier run (entries written before stages kept their own settings carry
    the run's, and PatchCore's then defaults: IVF, nprobe 8)."""
    from qarad.detection.patchcore import PatchCoreConfig

    done = partial.get("done", {})
    for tag, entry in done.items():
        if "settings" not in entry and "settings" in partial:
            key, stage = tag.split("|")
            entry["settings"] = _stage_settings(partial["settings"], key, stage)
            if stage in PATCHCORES:
                entry["settings"]["patchcore"] = json.loads(json.dumps(asdict(PatchCoreConfig(nprobe=8))))
    return done


MERGE_IGNORES = ("models", "methods", "data", "work")  # where things lie; methods a dataset did not run are "skipped"


def merged(old: dict, new: dict, settings: dict) -> dict:
    """`new` plus the datasets of an earlier results envelope that `new` does not redo; each kept dataset
    records the run that made it. Refused when the runs' settings differ (their rows would not compare)."""
    ours = {k: v for k, v in settings.items() if k not in MERGE_IGNORES}
    theirs = {k: v for k, v in old.get("settings", {}).items() if k not in MERGE_IGNORES}
    if ours != theirs:
        diff = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
        raise SystemExit(f"--merge: the results already there were made with other settings ({', '.join(diff)}); "
                         "rerun those datasets or write to another --out-json")
    kept = {key: {**res, "run": res.get("run") or {k: old[k] for k in ("command", "date", "machine")}}
            for key, res in old["results"].items() if key not in new}
    return {**kept, **new}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser()
    args = parse_args(ap, argv)
    if args.child:
        stage, key = args.child
        run = {"patchcore": run_patchcore, "patchcore_exact": lambda a, k: run_patchcore(a, k, "exact"),
               "detectors": run_detectors, "speed": run_speed}[stage]
        print(json.dumps(run(args, key)))
        return
    out_json = args.out_json or common.RESULTS / "ablation.json"
    partial_path = out_json.with_name(out_json.stem + ".partial.json")
    settings = {"data": str(args.data.resolve()), "models": {k: str(v.resolve()) for k, v in args.models.items()},
                "seeds": args.seeds, "n_synth": args.n_synth, "steps": args.steps, "work": str(args.work),
                "perlin_samples": args.perlin_samples, "speed_batch": args.speed_batch, "methods": args.methods,
                "limit_train": args.limit_train, "limit_test": args.limit_test, "backbone": args.backbone}
    partial = {} if args.fresh or not partial_path.exists() else json.loads(partial_path.read_text())
    done, results = _reusable(partial), {}
    partial = {"settings": settings, "done": done}
    for key in args.datasets:
        if not common.available(args.data, key.removesuffix(TILE_SUFFIX)):
            print(f"skip {key}: not found under {args.data}", file=sys.stderr)
            continue
        for stage in stages_of(key):
            tag = f"{key}|{stage}"
            wanted = json.loads(json.dumps(_stage_settings(settings, key, stage)))  # as it reads back
            if done.get(tag, {}).get("settings") != wanted:
                print(f"== {key}: {stage}", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                result = common.run_child([*argv, "--child", stage, key])
                done[tag] = {**result, "wall_s": time.perf_counter() - t0, "settings": wanted}
                common.write_json(partial_path, partial)
        results[key] = assemble(key, done)
    if not results:
        print("nothing to do: no dataset found", file=sys.stderr)
        return
    env = common.envelope(results)
    for res in results.values():
        res["run"] = {k: env[k] for k in ("command", "date", "machine")}
    if args.merge and out_json.exists():
        env["results"] = merged(json.loads(out_json.read_text()), results, settings)
    env["wall_s"] = sum(sum(r["shared"]["wall_s"].values()) for r in env["results"].values())
    env["settings"] = settings
    common.publish(out_json, env, "ablation", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
