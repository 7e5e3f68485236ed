"""Ablation: PatchCore against the detector trained on each kind of synthetic defect, per dataset.

    python benchmarks/ablation.py --models magnetic_tile/magnetic_tile=MODEL_DIR [--models KEY=MODEL_DIR ...]
        [--datasets KEY ...] [--seeds 0 1 2] [--n-synth 300] [--steps 500] [--work DIR]

Methods, all with the same backbone, `resize` 256, the same normal images (common.TRAIN_LIMIT)
and the same seeds:
  patchcore          memory bank, no synthesis; deterministic, so one run (std 0 by construction)
  perlin             detector head trained on DRAEM-style Perlin-noise texture patches
  procedural         ... on procedural renders, proposed masks, defect families in turn
  aras               ... on ARAS samples (MODEL_DIR from `qarad fit`): sample i has the family,
                     parameters, prompt and mask of procedural sample i (as benchmarks/synthesis.py)
  aras_qaw_linear    ... the ARAS samples with QAW weights, linear calibration
  aras_qaw_softmax   ... softmax calibration
A dataset without a --models entry runs no aras* method; they are listed under "skipped".

Cost control (the whole ablation has to fit in about 2 hours on 2 cores): per dataset, each
synthetic set is made once into --work (resumable: finished samples are kept and reused by a
rerun), backbone features of the normal, synthetic and test images are computed once, and only
the head is trained per method and seed; heads are scored on the cached test features with
`detection.train.score_cached`, which gives the maps and scores `score_images` gives. PatchCore,
the detectors and the inference-speed check each run in their own process (peak RSS their own);
finished stages are kept in OUT.partial.json, so an interrupted run resumes where it stopped.

Writes benchmarks/results/ablation.json: results[dataset][method] holds the metric keys of
detect.json as means over seeds plus <metric>_std (sample std, ddof 1), fit_s (head training;
PatchCore: its whole fit), test_images_per_s, peak_rss_mb and per_seed; results[dataset]["shared"]
holds synthesis, QAW scoring, feature caching and wall times; results[dataset]["skipped"] names
methods not run and why. Also refreshes the "ablation" section of BENCHMARKS.md.
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

SIZE = 256  # resize policy side, every method
SYNTH_METHODS = ("perlin", "procedural", "aras")
HEADS = {  # detector method -> (synthetic set, QAW calibration)
    "perlin": ("perlin", "none"), "procedural": ("procedural", "none"), "aras": ("aras", "none"),
    "aras_qaw_linear": ("aras", "linear"), "aras_qaw_softmax": ("aras", "softmax"),
}
METHODS = ("patchcore", *HEADS)
NO_MODEL = "not run (no ARAS model)"
STAGES = ("patchcore", "detectors", "speed")
SYNTH_SEED = 0  # the synthetic sets are made once per dataset and shared by every seed
MAX_ATTEMPTS = 5  # redraws of a sample whose change came out empty (it would teach the head nothing)
MAX_NORMAL_VIEWS = 4000  # as `qarad train --max-normal-views`
FEATURE_BATCH = 8
N_WARMUP, N_SPEED = 3, 50  # inference speed: images scored untimed, then timed
DEFAULT_WORK = Path("/tmp/qarad-ablation")
TIMING = "ablation_timing.json"  # seconds spent making / scoring a synthetic set, kept across resumes


# ---- data ----------------------------------------------------------------------------------
def splits(args, key: str) -> tuple[list, list]:
    """(train, test) samples: common.TRAIN_LIMIT normal images; --limit-* shrink both (smoke runs)."""
    from qarad.data.mvtec import scan_mvtec, subsample

    root, cat = common.DATASETS[key]
    limits = [n for n in (common.TRAIN_LIMIT.get(key), args.limit_train) if n is not None]
    train = subsample(scan_mvtec(args.data / root, cat, "train"), min(limits) if limits else None, seed=0)
    test = scan_mvtec(args.data / root, cat, "test")
    if args.limit_test is not None:  # half normal, half defective, in scan order
        good, bad = [s for s in test if s.label == 0], [s for s in test if s.label == 1]
        k = args.limit_test // 2
        keep = {s.image for s in subsample(good, k) + subsample(bad, args.limit_test - k)}
        test = [s for s in test if s.image in keep]
    return train, test


def dataset_dir(args, key: str) -> Path:
    return args.work / key.replace("/", "__")


# ---- synthesis -----------------------------------------------------------------------------
def _draw(method: str, image: np.ndarray, fg: np.ndarray, family: str, key: list[int], aras):
    """One sample -> (image, changed pixels, prompt)."""
    from qarad.defects.baselines import perlin_texture, procedural
    from synthesis import draw_prompt, family_mask

    rng = np.random.default_rng(key)
    if method == "perlin":
        r = perlin_texture(image, rng, foreground=fg)
        return r.image, r.mask, r.prompt
    if method == "procedural":
        r = procedural(image, rng, family=family, foreground=fg)
        return r.image, r.mask, r.prompt
    # ARAS replays procedural's draws (parameters, then mask) from an identically seeded generator
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
        family = FAMILIES[job.id % len(FAMILIES)]  # families in turn (perlin has none)
        for attempt in range(MAX_ATTEMPTS):
            out, changed, prompt = _draw(method, image, fg, family, [job.seed, attempt], aras)
            if changed.any():
                extra = {"attempts": attempt + 1, **({} if method == "perlin" else {"family": family})}
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

        model_dir = args.models[key].resolve()
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
    from qarad.commands.synth import QAW
    from qarad.progress import bar
    from qarad.quality.fit import load_dual_encoder
    from qarad.quality.scoring import score_folder
    from qarad.synthesis.fit import read_model_config
    from qarad.synthesis.jobs import MANIFEST, read_manifest

    timing = _timing(folder)
    entries = read_manifest(folder / MANIFEST)
    if timing["score_s"] is not None and all(e.get("score") is not None for e in entries):
        return timing
    model_dir = args.models[key]
    model = read_model_config(model_dir)
    scorer = load_dual_encoder(model_dir / QAW)
    t0 = time.perf_counter()
    with bar(len(entries), f"{key}: QAW scores", unit="sample") as tick:
        score_folder(folder, scorer, model.policy, model.fit.window_rule, on_sample=tick)
    timing["score_s"] = time.perf_counter() - t0
    common.write_json(folder / TIMING, timing)
    return timing


# ---- detectors on cached features ----------------------------------------------------------
def evaluate_cached(head, cached: list, test: list) -> dict:
    """Metrics exactly as evaluate() grades them (same map/mask pairing, same metric function)."""
    from qarad.detection.evaluate import _metrics, graded_pair
    from qarad.detection.train import score_cached

    maps, scores, masks = [], [], []
    for sample, c, (m, score) in zip(test, cached, score_cached(head, cached)):
        graded, mask = graded_pair(c.layout, m, sample)
        if mask is not None:
            maps.append(graded)
            masks.append(mask)
        scores.append(score)
    return _metrics(scores, [s.label for s in test], maps, masks)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def run_detectors(args, key: str) -> dict:
    """Synthesis, feature caching, then one head per (method, seed) scored on cached test features."""
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.segmenter import Segmenter, SegmenterConfig
    from qarad.detection.train import cache_images, fit_detector, normal_features, sample_weights, synthetic_features
    from qarad.progress import bar
    from qarad.quality.weighting import WeightingConfig

    train, test = splits(args, key)
    train_paths = [s.image for s in train]
    policy = ResolutionPolicy(mode="resize", size=SIZE)
    folders, timing = {}, {}
    for method in SYNTH_METHODS:
        if method == "aras" and key not in args.models:
            continue
        folders[method], timing[method] = synth_set(args, key, method, train_paths)
    if "aras" in folders:
        timing["aras"] = score_set(args, key, folders["aras"])

    embedder = Segmenter(SegmenterConfig(), policy)  # only its backbone is used here
    features_s = {}
    t0 = time.perf_counter()
    with bar(len(train_paths), f"{key}: features, normal") as tick:
        normal = normal_features(embedder, train_paths, FEATURE_BATCH, MAX_NORMAL_VIEWS, seed=0, on_image=tick)
    features_s["normal"] = time.perf_counter() - t0
    synth = {}
    for method, folder in folders.items():
        t0 = time.perf_counter()
        with bar(args.n_synth, f"{key}: features, {method}") as tick:
            synth[method] = synthetic_features(embedder, folder, FEATURE_BATCH, on_image=tick)
        features_s[method] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with bar(len(test), f"{key}: features, test") as tick:
        cached = cache_images(embedder, [s.image for s in test], FEATURE_BATCH, on_image=tick)
    features_s["test"] = time.perf_counter() - t0

    methods, speed_head = {}, dataset_dir(args, key) / "speed_head"
    for name, (source, calibration) in HEADS.items():
        if source not in synth:
            continue
        weighting = WeightingConfig(calibration=calibration)
        w = sample_weights(synth[source].scores, weighting)
        runs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            with bar(args.steps, f"{key}: {name}, seed {seed}", unit="step") as tick:
                head = fit_detector(SegmenterConfig(steps=args.steps, seed=seed), policy, normal, synth[source],
                                    weighting, on_step=lambda _: tick())
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ev = evaluate_cached(head, cached, test)
            runs.append({"seed": seed, **{m: ev[m] for m in METRICS}, "fit_s": fit_s,
                         "eval_s": time.perf_counter() - t0, "threshold": head.threshold_})
            if not methods and len(runs) == 1:
                head.save(speed_head)  # every head has the same architecture: one speed check serves all
        out = {}
        for m in (*METRICS, "fit_s"):
            out[m], out[f"{m}_std"] = _mean_std([r[m] for r in runs])
        out.update(n_train=len(train), n_test=len(test), n_normal_views=len(normal), n_synth_views=len(w),
                   weight_min=float(w.min()), weight_mean=float(w.mean()), weight_max=float(w.max()),
                   # what `qarad train` on this set would take: features of the normal and synthetic images + head
                   train_s=features_s["normal"] + features_s[source] + out["fit_s"],
                   seeds=list(args.seeds), per_seed=runs)
        methods[name] = out
    return {"methods": methods, "speed_head": str(speed_head), "features_s": features_s,
            "synth": {m: {**timing[m], "folder": str(folders[m]), "n": args.n_synth} for m in folders},
            "n_train": len(train), "n_test": len(test), "peak_rss_mb": common.peak_rss_mb(),
            "threads": torch.get_num_threads()}


def run_speed(args, key: str) -> dict:
    """Images/s of a trained head through the full torch path, in a fresh process (own peak RSS)."""
    from qarad.data.stream import load
    from qarad.detection.inference import score_images
    from qarad.detection.segmenter import Segmenter

    _, test = splits(args, key)
    paths = [s.image for s in test][: N_WARMUP + N_SPEED]
    warm, timed = paths[: min(N_WARMUP, len(paths) - 1)], paths[min(N_WARMUP, len(paths) - 1):]
    model = Segmenter.load(dataset_dir(args, key) / "speed_head")
    for _ in score_images(model, warm):  # loads the backbone, first-call allocations
        pass
    t0 = time.perf_counter()
    n = sum(1 for _ in score_images(model, timed))  # decode, resize, backbone, head, stitch, smooth
    end_to_end = n / (time.perf_counter() - t0)
    views = torch.cat([load(i, p, model.policy).views for i, p in enumerate(timed)])  # (n, 3, 256, 256)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(views), FEATURE_BATCH):
            for m in model.view_maps(views[s:s + FEATURE_BATCH]):
                model.smooth(m)
    return {"test_images_per_s": end_to_end, "model_images_per_s": len(views) / (time.perf_counter() - t0),
            "n_images": n, "peak_rss_mb": common.peak_rss_mb(), "threads": torch.get_num_threads()}


def run_patchcore(args, key: str) -> dict:
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.evaluate import evaluate
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig
    from qarad.progress import bar

    train, test = splits(args, key)
    config = PatchCoreConfig()  # as benchmarks/detect.py at resize: 10% coreset, uncapped
    model = PatchCore(config, ResolutionPolicy(mode="resize", size=SIZE))
    t0 = time.perf_counter()
    with bar(len(train), f"{key}: patchcore fit") as tick:
        model.fit([s.image for s in train], on_image=tick)
    fit_s = time.perf_counter() - t0
    with bar(len(test), f"{key}: patchcore eval") as tick:
        ev = evaluate(model, test, on_image=tick)
    out = {}
    for m in METRICS:
        out[m], out[f"{m}_std"] = ev.overall[m], 0.0
    out.update(fit_s=fit_s, fit_s_std=0.0, test_images_per_s=ev.images_per_s, peak_rss_mb=common.peak_rss_mb(),
               n_train=len(train), n_test=len(test), memory_rows=int(len(model.memory_)), seeds=[config.seed],
               note="deterministic: one run with coreset seed 0; the std is 0 by construction, not measured",
               threads=torch.get_num_threads())
    return out


# ---- results -------------------------------------------------------------------------------
def assemble(key: str, done: dict) -> dict:
    pc, det, speed = (done[f"{key}|{s}"] for s in STAGES)
    res = {"patchcore": pc}
    for name, r in det["methods"].items():
        res[name] = {**r, "test_images_per_s": speed["test_images_per_s"],
                     "model_images_per_s": speed["model_images_per_s"], "peak_rss_mb": det["peak_rss_mb"],
                     "infer_peak_rss_mb": speed["peak_rss_mb"]}
    skipped = {m: NO_MODEL for m in HEADS if m not in det["methods"]}
    if skipped:
        res["skipped"] = skipped
    res["shared"] = {"synth": det["synth"], "features_s": det["features_s"], "speed": speed,
                     "n_train": det["n_train"], "n_test": det["n_test"],
                     "wall_s": {s: done[f"{key}|{s}"]["wall_s"] for s in STAGES}}
    return res


def _cells(r: dict, spread: bool) -> list[str]:
    cells = [f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if spread else f"{r[m]:.3f}" for m in METRICS]
    return cells + [f"{r['fit_s']:.0f}", f"{r['test_images_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]


def table(key: str, res: dict) -> str:
    head = ("| method | image AUROC | image AP | image F1max | pixel AUROC | pixel AP | pixel F1max | AUPRO@0.3 "
            "| fit s | test img/s | peak RSS MB |")
    sh = res["shared"]
    lines = [f"### `{key}` ({sh['n_train']} normal train images, {sh['n_test']} test images)", "", head,
             "|" + "---|" * 11,
             "| patchcore (deterministic, 1 run) | " + " | ".join(_cells(res["patchcore"], False)) + " |"]
    for name in HEADS:
        if name in res:
            lines.append(f"| {name} | " + " | ".join(_cells(res[name], len(res[name]["seeds"]) > 1)) + " |")
        else:
            lines.append(f"| {name} | {res['skipped'][name]} |" + " |" * 9)
    synth = ", ".join(f"{m} {s['synth_s']:.0f} s" + (f" + QAW scoring {s['score_s']:.0f} s" if s.get("score_s") else "")
                      for m, s in sh["synth"].items())
    n_synth = next(iter(sh["synth"].values()))["n"] if sh["synth"] else 0
    feats = ", ".join(f"{k} {v:.0f} s" for k, v in sh["features_s"].items())
    trained = [m for m in ("aras_qaw_linear", "procedural") if m in res]
    wall = sum(sh["wall_s"].values())
    lines += ["", f"Once per dataset: synthesis of {n_synth} samples per set ({synth}); backbone features "
              f"({feats}). Inference without decoding (backbone + head + smoothing on 256x256 views): "
              f"{sh['speed']['model_images_per_s']:.1f} img/s; inference process peak RSS "
              f"{sh['speed']['peak_rss_mb']:.0f} MB."
              + (f" Detector training as `qarad train` does it (features + head), {trained[0]}: "
                 f"{res[trained[0]]['train_s'] / 60:.1f} min." if trained else "")
              + f" Dataset wall time {wall / 60:.1f} min."]
    return "\n".join(lines)


def markdown(env: dict) -> str:
    results, st = env["results"], env["settings"]
    smoke = st["limit_train"] or st["limit_test"]
    limited = " **Smoke run: train/test subsets limited, not comparable.**" if smoke else ""
    lines = [
        "## Ablation: PatchCore vs the detector trained on each synthesis", "",
        "Command (one run wrote everything below; results: `benchmarks/results/ablation.json`):", "",
        f"```sh\n{env['command']}\n```", "",
        f"Run of {env['date']}, whole run {env['wall_s'] / 60:.1f} min (stages summed, resumes included) on "
        f"{env['machine']}.", "",
        f"Settings: `resize` 256 for every method, EfficientNet-Lite0 stride 8 + 16 features, the normal "
        f"train images of benchmarks/detect.py; {st['n_synth']} synthetic samples per set, {st['steps']} head "
        f"steps, seeds {', '.join(map(str, st['seeds']))}; "
        "detector rows are mean ± sample std over the seeds (head initialisation, batches and held-out "
        "normals; the synthetic sets are made once per dataset and shared by every seed). PatchCore is "
        "deterministic: one run, no spread. *fit s*: PatchCore's whole fit; detectors: head training on "
        "cached features only (synthesis and features are listed under each table). *test img/s*: "
        "PatchCore's evaluation loop; detectors: the full torch path (decode, resize, backbone, head, "
        "smoothing) of one trained head on up to 50 test images, the same for every head (same "
        "architecture). *peak RSS*: PatchCore's own process; detectors: the one process that made the "
        "synthetic sets, cached all features and trained every head." + limited, "",
    ]
    for key, res in results.items():
        lines += [table(key, res), ""]
    return "\n".join(lines).rstrip()


# ---- driver --------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="*", default=list(common.DATASETS), choices=list(common.DATASETS))
    ap.add_argument("--models", action="append", default=[], metavar="DATASET=MODEL_DIR",
                    help="fitted ARAS model (qarad fit) for a dataset; repeat per dataset")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-synth", type=int, default=300, help="synthetic samples per method and dataset")
    ap.add_argument("--steps", type=int, default=500,
                    help="head training steps (default 500: 15 heads per dataset must fit the 2-hour budget)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="synthetic sets and the speed-check head")
    ap.add_argument("--limit-train", type=int, default=None, help="smoke runs only: at most N normal train images")
    ap.add_argument("--limit-test", type=int, default=None, help="smoke runs only: N test images, half defective")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--out-json", type=Path, default=None, help="default benchmarks/results/ablation.json")
    ap.add_argument("--fresh", action="store_true", help="ignore results of an interrupted earlier run")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DATASET"), help=argparse.SUPPRESS)
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: list[str]):
    args = ap.parse_args(argv)
    models = {}
    for item in args.models:
        key, sep, path = item.partition("=")
        if not sep or key not in common.DATASETS:
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser()
    args = parse_args(ap, argv)
    if args.child:
        stage, key = args.child
        run = {"patchcore": run_patchcore, "detectors": run_detectors, "speed": run_speed}[stage]
        print(json.dumps(run(args, key)))
        return
    out_json = args.out_json or common.RESULTS / "ablation.json"
    partial_path = out_json.with_name(out_json.stem + ".partial.json")
    settings = {"data": str(args.data.resolve()), "models": {k: str(v.resolve()) for k, v in args.models.items()},
                "seeds": args.seeds, "n_synth": args.n_synth, "steps": args.steps, "work": str(args.work),
                "limit_train": args.limit_train, "limit_test": args.limit_test}
    partial = {} if args.fresh or not partial_path.exists() else json.loads(partial_path.read_text())
    if partial.get("settings") != settings:
        partial = {"settings": settings, "done": {}}
    done, results = partial["done"], {}
    for key in args.datasets:
        if not common.available(args.data, key):
            print(f"skip {key}: not found under {args.data}", file=sys.stderr)
            continue
        for stage in STAGES:
            tag = f"{key}|{stage}"
            if tag not in done:
                print(f"== {key}: {stage}", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                result = common.run_child([*argv, "--child", stage, key])
                done[tag] = {**result, "wall_s": time.perf_counter() - t0}
                common.write_json(partial_path, partial)
        results[key] = assemble(key, done)
    if not results:
        print("nothing to do: no dataset found", file=sys.stderr)
        return
    env = common.envelope(results)
    env["wall_s"] = sum(sum(r["shared"]["wall_s"].values()) for r in results.values())
    env["settings"] = settings
    common.write_json(out_json, env)
    md = markdown(env)
    if not args.no_markdown:
        common.update_section("ablation", md)
    partial_path.unlink(missing_ok=True)
    print(md)


if __name__ == "__main__":
    main()
