"""What the prior's window size buys and costs: language-control ceiling vs speed and fit time.

    python benchmarks/token_budget.py --model MODEL_DIR [--sides 64 96 128]

ARAS re-samples the tokens of a window cut around the mask (synthesis/window.py: the mask's box
spans half of it). A bigger window gives the defect more 8x8 tokens, so more of its shape
survives the tokenizer, and gives the prior more tokens to draw one by one. For each window
side, with MODEL_DIR's tokenizer (it is convolutional: one fitted at 64 px encodes any side):
* ceiling: the family classifier of benchmarks/synthesis.py (trained on procedural renders cut
  by that side's window rule) on held-out renders, and on the same renders after encode/decode,
  i.e. the most language control any prior over these codes can reach at that side; plus a
  classifier trained on encode/decode of the training renders (does the judge, not the codes,
  lose the type?);
* speed: ARAS.synthesize end to end on the speed benchmark's masks and prompts, with a prior of
  that side's grid (MODEL_DIR's own where the grid matches, else the same architecture freshly
  initialised: sampling cost does not depend on the weights' values);
* fit time: seconds per step of the real fit loops (tokenizer, prior) on a small corpus cut at
  that side, times the model's step counts, plus MODEL_DIR's measured corpus and QAW stage times.
  A projection, labelled as one; the measured fits are in BENCHMARKS.md ("ARAS fit time").
Writes benchmarks/results/token_budget.json and a BENCHMARKS.md section.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import synthesis  # noqa: E402
import torch  # noqa: E402

TIMED_STEPS = 30  # fit-loop steps timed per stage and side (after one untimed warm-up step)
TIMING_CORPUS = 64  # renders in the small corpus the fit loops are timed on


def ceilings(aras, embedder, train: list[str], rule, n_render: int, seed: int) -> dict:
    """Classifier top-1 on held-out renders, raw and after encode/decode, at `rule`'s side."""
    from qarad.defects.vocab import FAMILIES

    judge = synthesis.family_classifier(embedder, train, aras.policy, rule, n_render, seed)
    held, y = judge.held, judge.labels[judge.held]
    recon = synthesis.features(embedder, [synthesis.through_tokenizer(aras, r, False) for r in judge.renders],
                               [r.cover for r in judge.renders], side=synthesis.CLASSIFIER_SIDE)
    on_recon = synthesis.fit_logreg(recon[~held], judge.labels[~held], len(FAMILIES), seed)

    def top1(predict, feats) -> float:
        return float((predict(feats[held]) == y).double().mean())

    pred = judge.predict(recon[held])
    return {"classifier_holdout_top1": judge.holdout_top1, "tokenizer_ceiling_top1": top1(judge.predict, recon),
            "recon_trained_ceiling_top1": top1(on_recon, recon),
            "tokenizer_ceiling_per_family": {f: float((pred[y == j] == j).double().mean())
                                             for j, f in enumerate(FAMILIES)},
            "n_holdout": int(held.sum())}


def at_side(aras, side: int):
    """MODEL_DIR's ARAS with the window rule and prior grid of `side` (same tokenizer, policy, text)."""
    from qarad.synthesis.pipeline import ARAS
    from qarad.synthesis.prior import Prior
    from qarad.synthesis.window import WindowRule

    grid = side // 8
    prior = aras.prior
    if prior.config.grid != grid:
        torch.manual_seed(0)
        prior = Prior(replace(prior.config, grid=grid))
    return ARAS(aras.tokenizer, prior, aras.policy, WindowRule(side, aras.rule.max_zoom), text=aras.text,
                refiner=aras.refiner), prior is aras.prior


def step_seconds(meta, side: int, paths: list[str]) -> dict:
    """Seconds per step of the tokenizer and prior fit loops at `side` (TIMED_STEPS each), with the
    fit settings of `meta` (the model's ModelConfig) but that side's window."""
    from qarad.synthesis import corpus as C
    from qarad.synthesis import loops as L

    base = replace(meta.fit, window=side, corpus_size=TIMING_CORPUS, checkpoint_every=10**9,
                   prior=replace(meta.fit.prior, grid=side // 8))
    corpus = C.build_corpus([Path(p) for p in paths], meta.policy, base)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        def timed(stage: str, run):  # -> the model fitted in the timed run
            run(replace(base, **{f"{stage}_steps": 1}), Path(tmp) / f"{stage}_warm")
            t0 = time.perf_counter()
            model = run(replace(base, **{f"{stage}_steps": TIMED_STEPS}), Path(tmp) / stage)
            out[stage] = (time.perf_counter() - t0) / TIMED_STEPS
            return model

        tokenizer = timed("tokenizer", lambda cfg, stem: L.fit_tokenizer(corpus, cfg, stem))
        codes, masks = L.encode_corpus(tokenizer, corpus, base)
        text = L.text_embeddings(corpus.prompts)
        timed("prior", lambda cfg, stem: L.fit_prior(codes, masks, text, cfg, stem))
    return out


def fixed_stage_seconds(model_dir: Path) -> float:
    """The model's measured corpus and QAW stage seconds (they do not depend on the window)."""
    from qarad.synthesis.model import read_timings

    timings = read_timings(model_dir)
    return timings.get("corpus", 0.0) + timings.get("dual_encoder", 0.0)


def projected_fit_minutes(fit, per_step: dict, fixed_s: float) -> float:
    """`fit` (FitConfig) step counts times the timed seconds per step, plus the fixed stages."""
    return (per_step["tokenizer"] * fit.tokenizer_steps + per_step["prior"] * fit.prior_steps + fixed_s) / 60.0


def table(res: dict) -> str:
    r = lambda v: f"{v:.3f}"  # noqa: E731
    rows = [f"Dataset `{res['dataset']}`; tokenizer of `{res['model']}` at every side; "
            f"{res['n_render']} renders per family ({res['sides'][0]['n_holdout']} held out); "
            f"{res['n_speed']} ARAS samples per side; run took {res['runtime_s'] / 60:.1f} min with "
            f"{res['threads']} torch threads.", "",
            "| window side (tokens) | classifier on held-out renders | after encode/decode (the ceiling) "
            "| classifier trained on encode/decode | ARAS samples / s | masked tokens, mean "
            "| projected `qarad fit` min |",
            "|---|---|---|---|---|---|---|"]
    for s in res["sides"]:
        rows.append(f"| {s['side']} ({s['side'] // 8}x{s['side'] // 8}) | {r(s['classifier_holdout_top1'])} "
                    f"| {r(s['tokenizer_ceiling_top1'])} | {r(s['recon_trained_ceiling_top1'])} "
                    f"| {s['aras_per_s']:.2f} | {s['mean_masked_tokens']:.1f} | {s['projected_fit_minutes']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    synthesis.add_model_args(ap)
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--n-render", type=int, default=60, help="procedural renders per family per side")
    ap.add_argument("--n-speed", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", type=Path, default=common.RESULTS / "token_budget.json")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if not synthesis.ready(ap, args):
        return
    if args.n_speed < 1 or args.n_render < 4:
        ap.error("--n-speed must be at least 1 and --n-render at least 4 (a quarter of them is held out)")
    bad = [s for s in args.sides if s < 32 or s % 8]
    if bad:
        ap.error(f"--sides must be multiples of 8 and at least 32, got {bad}")
    from qarad.backbone import Backbone, BackboneConfig
    from qarad.data.layouts import scan
    from qarad.backbone import PatchEmbedder
    from qarad.synthesis.model import read_config
    from qarad.synthesis.pipeline import ARAS

    t0 = time.perf_counter()
    root, cat = common.DATASETS[args.dataset]
    goods = [str(s.image) for s in scan(args.data / root, cat, "test", "mvtec") if s.label == 0]
    train = [str(s.image) for s in scan(args.data / root, cat, "train", "mvtec")]
    model = ARAS.load(args.model)
    meta, fixed_s = read_config(args.model), fixed_stage_seconds(args.model)
    embedder = PatchEmbedder(Backbone(BackboneConfig(strides=(8, 16)))).eval()
    sides = []
    for side in args.sides:
        aras, own_prior = at_side(model, side)
        row = {"side": side, "own_prior": own_prior}
        row.update(ceilings(aras, embedder, train, aras.rule, args.n_render, args.seed))
        speed = synthesis.speed(aras, goods, args.n_speed, 0, args.seed)
        row.update({k: speed[k] for k in ("aras_per_s", "mean_masked_tokens")})
        row["fit_s_per_step"] = step_seconds(meta, side, train)
        row["projected_fit_minutes"] = projected_fit_minutes(meta.fit, row["fit_s_per_step"], fixed_s)
        sides.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tokenizer_ceiling_per_family"}), flush=True)
    results = {"dataset": args.dataset, "model": str(args.model), "n_render": args.n_render, "n_speed": args.n_speed,
               "seed": args.seed, "threads": torch.get_num_threads(), "sides": sides,
               "runtime_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(common.peak_rss_mb())}
    common.write_json(args.out_json, common.envelope(results))
    md = table(results)
    if not args.no_markdown:
        common.update_section("token-budget", md)
    print(md)


if __name__ == "__main__":
    main()
