"""Realism of the procedural renderer without a fitted model: KID and seams of the procedural and
Perlin baselines against real defect regions, and renders / s, per dataset of ../shared/data.

    python benchmarks/renderer_realism.py [--datasets KEY ...] [--label after] [--src DIR]
    python benchmarks/renderer_realism.py --speed-only --speed-repeats 3 [--label after] [--src DIR]
    python benchmarks/renderer_realism.py --grid benchmarks/results/renderer_realism.png --before-src DIR

The measures are benchmarks/synthesis.py's own (`realism`: the same real regions, masks, seeds,
features and KID), with its ARAS part left out. Windows are cut by `--model`'s resolution policy
and window rule, or by `qarad fit`'s defaults (resize 256, 64-px window, zoom up to 4).
Results are merged into --out-json under results[label][dataset], so runs of other labels and
datasets stay; `--speed-only` re-times the renders alone and updates only those keys (on a
shared machine, time before and after one after the other). `--src` measures the renderer of
another checkout's src/ (the branch's start, for before / after); `--grid` draws every family on
each dataset's normal images, rendered by `--before-src` (in a child process) and by this
checkout, side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import synthesis  # noqa: E402  (puts this checkout's src/ on sys.path)

GRID_TILE = 96  # px a side of one window in the grid


def windows(args):
    """(policy, rule) the windows are cut with: --model's, or `qarad fit`'s defaults."""
    from qarad.data.resolution import ResolutionPolicy
    from qarad.synthesis.model import FitConfig, read_config

    if args.model is None:
        return ResolutionPolicy(), FitConfig().window_rule
    config = read_config(args.model)
    return config.policy, config.fit.window_rule


def samples(args, key: str):
    from qarad.data.layouts import scan

    root, cat = common.DATASETS[key]
    test = scan(args.data / root, cat, "test", "mvtec")
    goods = [str(s.image) for s in test if s.label == 0]
    defects = [s for s in test if s.label == 1 and s.mask is not None]
    train = [str(s.image) for s in scan(args.data / root, cat, "train", "mvtec")]
    return goods, defects, train


def render_speed(goods: list[str], train: list[str], policy, rule, n: int, seed: int) -> dict:
    """Renders / s, image reads excluded: the procedural baseline on whole test images (as
    `realism` runs it), and fitting-corpus samples (`make_sample` on windows of working-resolution
    normal images, as `qarad fit` cuts them), families in turn."""
    from qarad.data.io import read_image
    from qarad.defects.baselines import procedural
    from qarad.defects.corpus import CorpusConfig, make_sample
    from qarad.defects.vocab import FAMILIES

    images = [synthesis.load(p) for p in goods[:8]]
    works = [policy.layout(*im.shape[:2]).to_work(im).permute(1, 2, 0).numpy()
             for im in (read_image(p) for p in train[:8])]
    config, rng = CorpusConfig(window=rule.side, seed=seed), np.random.default_rng([seed, 8])
    make_sample(works[0], rng, config)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        make_sample(works[i % len(works)], rng, config, family=FAMILIES[i % len(FAMILIES)])
    corpus = n / (time.perf_counter() - t0)
    t0, m = time.perf_counter(), max(1, n // 4)  # whole images cost several times more
    for i in range(m):
        image, fg = images[i % len(images)]
        procedural(image, np.random.default_rng([seed, 8, i]), FAMILIES[i % len(FAMILIES)], foreground=fg)
    return {"corpus_renders_per_s": corpus, "procedural_renders_per_s": m / (time.perf_counter() - t0)}


def speed(args, key: str) -> dict:
    """render_speed `args.speed_repeats` times -> the medians, and every run."""
    policy, rule = windows(args)
    goods, _, train = samples(args, key)
    runs = [render_speed(goods, train, policy, rule, args.n_speed, args.seed) for _ in range(args.speed_repeats)]
    return {**{k: float(np.median([r[k] for r in runs])) for k in runs[0]},
            "speed_runs": runs, "n_speed": args.n_speed}


def provenance(prefix: str = "") -> dict:
    """Which package was measured, by which command, when: each entry carries its own, since
    the results file merges several runs."""
    import qarad

    run = common.envelope({})
    return {f"{prefix}package": str(Path(qarad.__file__).parent), f"{prefix}command": run["command"],
            f"{prefix}date": run["date"]}


def measure(args, key: str) -> dict:
    from qarad.backbone import Backbone, BackboneConfig, PatchEmbedder

    policy, rule = windows(args)
    goods, defects, _ = samples(args, key)
    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16)))).eval()
    t0 = time.perf_counter()
    out = {**synthesis.realism(embedder, goods, defects, args, [], policy, rule), **speed(args, key)}
    return {**out, "seed": args.seed, "runtime_s": round(time.perf_counter() - t0, 1), **provenance(),
            **provenance("speed_")}


def merge(path: Path, label: str, per_dataset: dict) -> dict:
    """results[label][dataset] of the file at `path`, updated key by key with `per_dataset`;
    every other key (other labels, datasets, measures) is kept."""
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    for key, entry in per_dataset.items():
        results.setdefault(label, {}).setdefault(key, {}).update(entry)
    return results


# ---- grid --------------------------------------------------------------------------------
def tiles(args) -> np.ndarray:
    """(datasets, families, 2, T, T, 3) uint8: the normal window and the render, per family: the
    same image, params and mask for any renderer (they are drawn before the render)."""
    from PIL import Image
    from qarad.defects.baselines import procedural
    from qarad.defects.vocab import FAMILIES

    policy, rule = windows(args)

    def window(img, mask):
        win, _ = synthesis.cut(img, mask, policy, rule)
        pic = (np.clip(win.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(pic).resize((GRID_TILE, GRID_TILE), Image.BICUBIC))

    out = np.zeros((len(args.datasets), len(FAMILIES), 2, GRID_TILE, GRID_TILE, 3), np.uint8)
    for d, key in enumerate(args.datasets):
        goods = samples(args, key)[0]
        for f, family in enumerate(FAMILIES):
            image, fg = synthesis.load(goods[(7 * f) % len(goods)])
            res = procedural(image, np.random.default_rng([args.seed, 9, d, f]), family=family, foreground=fg)
            if res.mask.any():
                out[d, f] = window(image, res.mask), window(res.image, res.mask)
    return out


def grid_png(args) -> None:
    """One block of columns per dataset (normal | before | after), one row per family; saved
    with a 256-colour palette to stay small."""
    import tempfile

    from PIL import Image, ImageDraw

    from qarad.defects.vocab import FAMILIES

    after = tiles(args)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "before.npy"
        child = ["--tiles", str(npy), "--src", str(args.before_src), "--seed", str(args.seed),
                 "--datasets", *args.datasets, "--data", str(args.data)]
        common.run_child(child + (["--model", str(args.model)] if args.model else []))
        before = np.load(npy)
    t, gap, head, side = GRID_TILE, 8, 28, 84
    block = 3 * t + gap
    sheet = Image.new("RGB", (side + len(args.datasets) * block, head + len(FAMILIES) * t), "white")
    draw = ImageDraw.Draw(sheet)
    for d, key in enumerate(args.datasets):
        x0 = side + d * block
        draw.text((x0, 2), key.split("/")[1], fill="black")
        draw.text((x0, 14), "normal    before    after", fill="black")
        for f, family in enumerate(FAMILIES):
            for c, pic in enumerate((after[d, f, 0], before[d, f, 1], after[d, f, 1])):
                sheet.paste(Image.fromarray(pic), (x0 + c * t, head + f * t))
    for f, family in enumerate(FAMILIES):
        draw.text((4, head + f * t + t // 2 - 6), family, fill="black")
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(256).save(args.grid, optimize=True)


# ---- report ------------------------------------------------------------------------------
def table(results: dict, envelope: dict) -> str:
    r = lambda v, d=3: "n/a" if v is None or v != v else f"{v:.{d}f}"  # noqa: E731
    labels = [k for k in ("before", "after") if k in results] or list(results)
    columns = [("procedural KID", lambda x: f"{r(x['kid']['procedural'])} ± {r(x['kid_std']['procedural'])}"),
               ("seam", lambda x: r(x["seam"]["procedural"], 2)),
               ("corpus renders/s", lambda x: r(x.get("corpus_renders_per_s"), 0)),
               ("whole-image renders/s", lambda x: r(x.get("procedural_renders_per_s"), 1))]
    head = [f"{name}, {k}" for name, _ in columns for k in labels]
    lines = [f"Last command: `{envelope['command']}`, {envelope['date']}, {envelope['machine']}.", "",
             "| dataset | " + " | ".join(head[:2 * len(labels)]) + " | Perlin KID | "
             + " | ".join(head[2 * len(labels):]) + " |", "|---" * (2 + len(head)) + "|"]
    for key in common.DATASETS:
        if not all("kid" in results[k].get(key, {}) for k in labels):  # a speed-only entry has no KID row
            continue
        res = [results[k][key] for k in labels]
        cells = [fmt(x) for _, fmt in columns for x in res]
        perlin = f"{r(res[-1]['kid']['perlin'])} ± {r(res[-1]['kid_std']['perlin'])}"
        lines.append(f"| {key} | " + " | ".join(cells[:2 * len(labels)]) + f" | {perlin} | "
                     + " | ".join(cells[2 * len(labels):]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="+", default=list(common.DATASETS), choices=list(common.DATASETS))
    ap.add_argument("--model", type=Path, default=None, help="cut windows as this ARAS model does (default: fit's)")
    ap.add_argument("--n-kid", type=int, default=120, help="real and synthetic regions per dataset")
    ap.add_argument("--n-speed", type=int, default=200, help="fitting-corpus renders timed per dataset "
                    "(and a quarter as many whole-image ones)")
    ap.add_argument("--speed-repeats", type=int, default=1, help="time the renders this many times (median)")
    ap.add_argument("--speed-only", action="store_true", help="measure renders / s only (merged into the entry)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="after", help="results key of this run (e.g. before / after)")
    ap.add_argument("--src", type=Path, default=None, help="measure the qarad package under this src/ instead")
    ap.add_argument("--out-json", type=Path, default=common.RESULTS / "renderer_realism.json")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--grid", type=Path, default=None, help="write the before / after grid PNG here, measure nothing")
    ap.add_argument("--before-src", type=Path, default=None, help="with --grid: src/ of the renderer before")
    ap.add_argument("--tiles", type=Path, default=None, help=argparse.SUPPRESS)  # the grid's child
    args = ap.parse_args(argv)
    if args.src:
        sys.path.insert(0, str(args.src.resolve()))
    import torch

    torch.set_num_threads(1)  # single-threaded, as the numbers in BENCHMARKS.md were taken
    args.datasets = [k for k in args.datasets if common.available(args.data, k) or print(
        f"skip: {k} not found under {args.data}", file=sys.stderr)]
    if args.tiles:
        np.save(args.tiles, tiles(args))
        print(json.dumps({"tiles": str(args.tiles)}))
        return
    if args.grid:
        if args.before_src is None:
            ap.error("--grid needs --before-src (the src/ of the renderer to compare with)")
        grid_png(args)
        return
    per_dataset = {}
    for key in args.datasets:
        per_dataset[key] = {**speed(args, key), **provenance("speed_")} if args.speed_only else measure(args, key)
        print(key, json.dumps({k: v for k, v in per_dataset[key].items()
                               if k in ("kid", "kid_std", "seam", "corpus_renders_per_s", "procedural_renders_per_s")}))
    env = common.envelope(merge(args.out_json, args.label, per_dataset))
    common.publish(args.out_json, env, "renderer_realism", lambda e: table(e["results"], e), not args.no_markdown)


if __name__ == "__main__":
    main()
