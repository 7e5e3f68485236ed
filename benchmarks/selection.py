"""Selection by the validation split: does it rank settings as the test split does, and does
`qarad train --auto` beat the fixed default?

    python benchmarks/selection.py [--datasets KEY ...] [--models KEY=MODEL_DIR ...] [--n-synth 200]
        [--budget-factor 4.5] [--train-cap KEY=N ...] [--limit-test N] [--work DIR]

Per dataset of benchmarks/common.py (skipped when it is not under --data):
  1. ARAS samples (when the dataset has a fitted model: --models, default benchmarks/models/NAME when it
     holds a finished fit): `qarad synth MODEL --images TRAIN --prompts P... --auto-masks --n N` and
     `qarad score`, on the run's training subset, one prompt per defect family (as the ablation's
     families), into --work (resumable). Without a model the runs use Perlin patches only and the
     "aras"/"both" correlations are null.
  2. `qarad train --auto` (auto.train_auto) with a budget of --budget-factor x its first candidate
     (more candidates than the default 3x, for the rank correlation); every trained candidate is
     evaluated on the test split, only to report.
  3. auto: what the default budget (auto.BUDGET_FACTOR x) would have trained and chosen (auto.replay,
     then the validation criterion); default: today's `qarad train --method qarad` (ARAS + Perlin,
     no split: --val-share 0); patchcore: today's `qarad train --method patchcore` (--val-share 0);
     oracle: the candidate with the best test criterion in hindsight.
  4. spearman: per validation source (aras, perlin, procedural, both), the rank correlation between the
     candidates' validation criterion and their test criterion (mean of image AUROC and AUPRO
     each; scipy.stats.spearmanr).
The training subset is common.TRAIN_LIMIT capped further by --train-cap (default TRAIN_CAP); test
images: a seeded --test-cap subset with both classes (default TEST_CAP; all elsewhere). Results:
benchmarks/results/selection.json, results[dataset] = {candidates, auto, default, patchcore, oracle,
spearman, ...}; the "selection"
section of BENCHMARKS.md. Each dataset runs in its own process; finished datasets are kept in
selection.partial.json.

On a shared machine run it with OMP_NUM_THREADS=1: with the 2 cores oversubscribed (load ~9), one
head training step took 3.0 s with 2 torch threads and 0.26 s with 1 (measured 2026-12-07).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from qarad.metrics import METRICS  # noqa: E402

# CPU time (the whole benchmark in about 45 min of 2 shared cores): normal train images and test images
# per dataset, seeded subsets (mpdd: all 53 / 98)
TRAIN_CAP = {"magnetic_tile/magnetic_tile": 120, "deeppcb/deeppcb": 100}
TEST_CAP = {"magnetic_tile/magnetic_tile": 300, "deeppcb/deeppcb": 300}
MODEL_NAMES = {"magnetic_tile/magnetic_tile": "magnetic_tile", "mpdd/metal_plate": "mpdd", "deeppcb/deeppcb": "deeppcb"}
SOURCES = ("aras", "perlin", "procedural", "both")
SIZE = 256
DEFAULT_WORK = Path(__file__).resolve().parent / "models" / "selection-work"  # git-ignored


def criterion(m: dict) -> float:
    return (m["image_auroc"] + m["aupro"]) / 2


def prompts(image_path: Path) -> list[str]:
    """One prompt per defect family, drawn as the procedural renderer draws them (the ablation's families)."""
    import numpy as np

    from qarad.data.io import read_image
    from qarad.defects.prompts import prompt_for
    from qarad.defects.renderer import is_monochrome, sample_params
    from qarad.defects.vocab import FAMILIES

    coloured = not is_monochrome(read_image(image_path))
    return [prompt_for(sample_params(np.random.default_rng([0, i]), f, coloured=coloured))
            for i, f in enumerate(FAMILIES)]


def splits(args, key: str) -> tuple[list, list]:
    from qarad.data.layouts import scan
    from qarad.data.mvtec import subsample

    root, cat = common.DATASETS[key]
    caps = [n for n in (common.TRAIN_LIMIT.get(key), args.train_cap.get(key, TRAIN_CAP.get(key))) if n]
    train = subsample(scan(args.data / root, cat, "train", "mvtec"), min(caps) if caps else None, seed=0)
    test = scan(args.data / root, cat, "test", "mvtec")
    limit = args.test_cap.get(key, TEST_CAP.get(key))
    if limit and len(test) > limit:  # seeded, both classes in their proportion
        good, bad = [s for s in test if s.label == 0], [s for s in test if s.label == 1]
        k = round(limit * len(good) / len(test))
        keep = {s.image for s in subsample(good, k, seed=0) + subsample(bad, limit - k, seed=0)}
        test = [s for s in test if s.image in keep]
    return train, test


def aras_set(args, key: str, train: list) -> Path | None:
    from qarad import api
    from qarad.synthesis.jobs import MANIFEST, read_manifest

    model = args.models.get(key)
    if model is None:
        return None
    out = args.work / key.replace("/", "__") / f"aras-n{args.n_synth}"
    paths = [s.image for s in train]
    t0 = time.perf_counter()
    api.synth(model, paths, prompts(paths[0]), out, n=args.n_synth, seed=0, auto_masks=True, workers=args.workers)
    if any(e.get("score") is None for e in read_manifest(out / MANIFEST)):
        api.score(out, model)
    args.synth_s = time.perf_counter() - t0
    return out


def test_metrics(run: Path, test: list) -> dict:
    from qarad import runs
    from qarad.detection.evaluate import evaluate

    ev = evaluate(runs.load_detector(run), test)
    return {**{m: ev.overall[m] for m in METRICS}, "test_images_per_s": ev.images_per_s}


def measure(args, key: str) -> dict:
    """One dataset: the ARAS set, the --auto grid with test metrics, default and PatchCore."""
    from qarad import api
    from qarad.auto import BUDGET_FACTOR, AutoConfig, replay, train_auto
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.patchcore import PatchCoreConfig
    from qarad.detection.segmenter import SegmenterConfig
    from qarad.validation_config import ValidationConfig

    root, cat = common.DATASETS[key]
    data = args.data / root
    train, test = splits(args, key)
    args.synth_s = None
    synth = aras_set(args, key, train)
    negatives = ("synthetic", "perlin") if synth else ("perlin",)
    training = api.QaradTraining(synth=synth, perlin_samples=args.perlin_samples)
    policy = ResolutionPolicy(size=SIZE)
    work = args.work / key.replace("/", "__") / "runs"
    tested: dict[str, dict] = {}

    def on_candidate(name: str, run: Path) -> None:
        tested[name] = test_metrics(run, test)  # only to report: never read by the choice

    t0 = time.perf_counter()
    done = train_auto(data, cat, work / "auto", SegmenterConfig(negatives=negatives, steps=args.steps), training,
                      policy,
                      AutoConfig(budget_factor=args.budget_factor), len(train), overwrite=True,
                      on_candidate=on_candidate)
    auto_s = time.perf_counter() - t0
    rows = done.candidates
    first_s = rows[0]["seconds"]
    by_name = {r["name"]: r for r in rows}
    default_budget = min(BUDGET_FACTOR, args.budget_factor) * first_s  # (smaller only in smoke runs)
    started = replay(rows, default_budget)  # what the default budget would have trained ...
    auto_name = max(started, key=lambda n: (by_name[n]["criterion"], -started.index(n)))  # ... and chosen
    settings = ("name", "method", "policy", "backbone", "coreset_ratio", "status", "estimate_s")
    candidates = []
    for r in rows:
        c = {k: r[k] for k in settings}
        if r["status"] == "trained":
            c.update(seconds=r["seconds"], head_weight=r["head_weight"], image_rule=r["image_rule"],
                     validation=r["validation"], validation_by_source=r["by_source"],
                     validation_criterion=r["criterion"], test=tested[r["name"]],
                     test_criterion=criterion(tested[r["name"]]), in_default_budget=r["name"] in started)
        candidates.append(c)
    trained = [c for c in candidates if c["status"] == "trained"]
    oracle = max(trained, key=lambda c: c["test_criterion"])
    plain = {}
    for name, detector in (("default", SegmenterConfig(negatives=negatives, steps=args.steps)),
                           ("patchcore", PatchCoreConfig())):
        t1 = time.perf_counter()
        api.train(data, cat, work / name, detector, training if name == "default" else api.QaradTraining(), policy,
                  len(train), overwrite=True, validation=ValidationConfig(val_share=0.0))
        plain[name] = {**test_metrics(work / name, test), "train_s": round(time.perf_counter() - t1, 2),
                       "negatives": list(negatives) if name == "default" else None}
    return {"candidates": candidates,
            "auto": {**next(c for c in trained if c["name"] == auto_name)["test"], "name": auto_name,
                     "trained": started, "budget_s": round(default_budget, 2),
                     "seconds": round(sum(by_name[n]["seconds"] for n in started), 2)},
            "default": plain["default"], "patchcore": plain["patchcore"],
            "oracle": {**oracle["test"], "name": oracle["name"]},
            "spearman": spearman(trained), "n_train": len(train), "n_test": len(test),
            "synth": None if synth is None else {"folder": str(synth), "n": args.n_synth, "seconds": args.synth_s},
            "auto_grid_s": round(auto_s, 2), "peak_rss_mb": common.peak_rss_mb()}


def spearman(trained: list[dict]) -> dict:
    """Rank correlation of each validation source's criterion with the test criterion, over the candidates."""
    from scipy.stats import spearmanr

    out = {}
    for s in SOURCES:
        pairs = [(criterion(c["validation_by_source"][s]), c["test_criterion"]) for c in trained
                 if c.get("validation_by_source") and s in c["validation_by_source"]]
        out[s] = None if len(pairs) < 3 else float(spearmanr(*zip(*pairs)).statistic)
    return out


# ---- results -------------------------------------------------------------------------------
def _m(r: dict) -> str:
    return f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} / {r['aupro']:.3f}"


def _rho(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def table(key: str, res: dict) -> str:
    lines = [f"### `{key}` ({res['n_train']} normal train images, {res['n_test']} test images)", "",
             "| candidate | validation: image AUROC / pixel AUROC / AUPRO | head weight, rule | test: image AUROC / "
             "pixel AUROC / AUPRO | train s |", "|---|---|---|---|---:|"]
    for c in res["candidates"]:
        if c["status"] != "trained":
            lines.append(f"| {c['name']} | {c['status']} (estimate {c['estimate_s']:.0f} s) | | | |")
            continue
        mark = "" if c["in_default_budget"] else " (over the default budget)"
        gate = "bank" if c["head_weight"] is None else f"{c['head_weight']:g}, {c['image_rule']}"
        lines.append(f"| {c['name']}{mark} | {_m(c['validation'])} | {gate} | {_m(c['test'])} | {c['seconds']:.0f} |")
    lines += ["", "| run | image AUROC | pixel AUROC | AUPRO | test img/s | what |", "|---|---:|---:|---:|---:|---|"]
    what = {"auto": f"--auto (default budget {res['auto']['budget_s'] / 60:.1f} min, {len(res['auto']['trained'])} "
                    f"candidates in {res['auto']['seconds'] / 60:.1f} min): {res['auto']['name']}",
            "default": f"today's `qarad train --method qarad` ({' + '.join(res['default']['negatives'])}, no split)",
            "patchcore": "today's `qarad train --method patchcore` (no split)",
            "oracle": f"best candidate on test, in hindsight: {res['oracle']['name']}"}
    for name in ("auto", "default", "patchcore", "oracle"):
        r = res[name]
        lines.append(f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | "
                     f"{r['test_images_per_s']:.1f} | {what[name]} |")
    sp = res["spearman"]
    lines += ["", "Spearman rank correlation between validation and test criterion (mean of image AUROC and AUPRO) "
              f"over the trained candidates: ARAS {_rho(sp['aras'])}, Perlin {_rho(sp['perlin'])}, procedural "
              f"{_rho(sp.get('procedural'))} (what --auto reads), ARAS + Perlin {_rho(sp['both'])}."]
    return "\n".join(lines)


def markdown(env: dict) -> str:
    st = env["settings"]
    lines = ["## Selection by the validation split (`--auto`, the gate, which synthetic source validates best)", "",
             "Command (results: `benchmarks/results/selection.json`):", "", f"```sh\n{env['command']}\n```", "",
             f"Run of {env['date']} on {env['machine']}; {env['wall_s'] / 60:.1f} min.", "",
             f"Settings: `resize` {SIZE} first, the `--auto` grid (auto.py) with a budget of {st['budget_factor']:g}x "
             f"its first candidate (the default is 3x: rows marked over it are what the larger budget added for the "
             f"rank correlation; `auto` below is what 3x trained and chose); {st['n_synth']} ARAS samples per "
             f"dataset with a model; normal train images capped ({TRAIN_CAP}, {st['train_cap'] or 'default caps'}) "
             f"and test images ({TEST_CAP}, {st['test_cap'] or 'default caps'}) as seeded subsets. Validation "
             "metrics choose; test metrics only report.", ""]
    for key, res in env["results"].items():
        lines += [table(key, res), ""]
    return "\n".join(lines).rstrip()


# ---- driver --------------------------------------------------------------------------------
def _finished_model(folder: Path) -> bool:
    """An ARAS model whose last stage (the QAW scorer) is written: the fit is done."""
    timings = folder / "timings.json"
    return ((folder / "aras.json").is_file() and (folder / "dual_encoder.safetensors").is_file()
            and timings.is_file() and "dual_encoder" in json.loads(timings.read_text()))


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="*", default=list(common.DATASETS), choices=list(common.DATASETS))
    ap.add_argument("--models", action="append", default=[], metavar="DATASET=MODEL_DIR",
                    help="fitted ARAS model per dataset (default benchmarks/models/NAME when its fit is finished)")
    ap.add_argument("--n-synth", type=int, default=200, help="ARAS samples per dataset")
    ap.add_argument("--workers", type=int, default=2, help="synth worker processes")
    ap.add_argument("--budget-factor", type=float, default=4.0,
                    help="the grid's budget in first-candidate times (default 4: one candidate more than --auto's 3)")
    ap.add_argument("--train-cap", action="append", default=[], metavar="DATASET=N",
                    help=f"normal train images (default {TRAIN_CAP})")
    ap.add_argument("--test-cap", action="append", default=[], metavar="DATASET=N",
                    help=f"seeded test subset of N images (default {TEST_CAP}; 0: all)")
    ap.add_argument("--steps", type=int, default=1000, help="head training steps (default: as qarad train)")
    ap.add_argument("--perlin-samples", type=int, default=200, help="Perlin patches (default: as qarad train)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out-json", type=Path, default=common.RESULTS / "selection.json")
    ap.add_argument("--no-markdown", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="ignore finished datasets of an interrupted run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    models = {}
    for key, name in MODEL_NAMES.items():
        default = common.ROOT / "benchmarks" / "models" / name
        if _finished_model(default):
            models[key] = default
    for item in args.models:
        key, _, path = item.partition("=")
        if key not in common.DATASETS or not (Path(path) / "dual_encoder.safetensors").is_file():
            ap.error(f"--models {item!r}: expected DATASET=MODEL_DIR with a fitted ARAS model (and its QAW scorer)")
        models[key] = Path(path)
    args.models = {k: v.resolve() for k, v in models.items()}
    args.train_cap = {k: int(v) for k, _, v in (i.partition("=") for i in args.train_cap)}
    args.test_cap = {k: int(v) for k, _, v in (i.partition("=") for i in args.test_cap)}
    args.work = args.work.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    settings = {"data": str(args.data.resolve()), "models": {k: str(v) for k, v in args.models.items()},
                "n_synth": args.n_synth, "budget_factor": args.budget_factor, "train_cap": args.train_cap,
                "test_cap": args.test_cap, "steps": args.steps, "perlin_samples": args.perlin_samples}
    partial_path = args.out_json.with_name(args.out_json.stem + ".partial.json")
    partial = {} if args.fresh or not partial_path.exists() else json.loads(partial_path.read_text())
    done = partial.get("done", {}) if partial.get("settings") == json.loads(json.dumps(settings)) else {}
    results = {}
    for key in args.datasets:
        if not common.available(args.data, key):
            print(f"skip {key}: not under {args.data}", file=sys.stderr)
            continue
        if key not in done:
            print(f"== {key}", file=sys.stderr, flush=True)
            t1 = time.perf_counter()
            done[key] = {**common.run_child([*argv, "--child", key]), "wall_s": time.perf_counter() - t1}
            common.write_json(partial_path, {"settings": settings, "done": done})
        results[key] = done[key]
        _publish(args, settings, results)  # after every dataset: a long run's finished datasets are readable
    if not results:
        print("nothing to do: no dataset found", file=sys.stderr)


def _publish(args, settings: dict, results: dict) -> None:
    env = common.envelope(dict(results))
    env["settings"], env["wall_s"] = settings, sum(r["wall_s"] for r in results.values())
    common.publish(args.out_json, env, "selection", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
