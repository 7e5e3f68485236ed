"""Issue 35's table and verdicts from the three runs of benchmarks/synthesis.py (one per shared dataset).

    python benchmarks/synthesis_composite_table.py [benchmarks/results/synthesis_composite_*.json]

Prints Markdown: KID and seams of each ARAS composite beside the two baselines, attribute control
(each composite and the procedural renders' ceiling), the family judge's ceiling and family
control, speed, and each must-show of the issue as met or not. It also applies the composite
rule leave-one-dataset-out: `grain` wins a dataset when its KID to the real defects is below
`replace`'s and its seam is no larger than `replace`'s or still below both baselines'; the rule
picks `grain` from a set of datasets only when it wins every one of them, and the default becomes
`grain` only when the rule, applied to each pair of datasets, picks it for every held-out one
(so no dataset's test defects choose the setting for themselves).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "benchmarks" / "results" / f"synthesis_composite_{m}.json" for m in ("magnetic_tile", "mpdd", "deeppcb")]
ATTRIBUTES = ("polarity", "size", "elongation", "orientation")
COMPOSITES = ("replace", "grain")
ATTRIBUTE_GOAL = {"magnetic_tile/magnetic_tile": 0.9}  # 0.8 elsewhere
JUDGE_GOAL, CONTROL_GOAL, SPEED_GOAL, SPEEDUP_GOAL, FIT_GOAL_MIN = 0.9, 0.7, 2.5, 5.0, 45.0


def f(v, d: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{d}f}"


def grain_wins(r: dict) -> bool:
    kid, seam = r["kid"], r["seam"]
    lower = kid["aras_grain"] < kid["aras_replace"]
    seam_ok = seam["aras_grain"] <= seam["aras_replace"] or seam["aras_grain"] < min(seam["procedural"], seam["perlin"])
    return bool(lower and seam_ok)


def composite_choice(runs: dict[str, dict]) -> tuple[str, dict[str, str]]:
    """(the default, {held-out dataset: what the other datasets pick})."""
    wins = {d: grain_wins(r) for d, r in runs.items()}
    held = {d: "grain" if all(w for o, w in wins.items() if o != d) else "replace" for d in runs}
    return ("grain" if all(c == "grain" for c in held.values()) and len(runs) == 3 else "replace"), held


def tables(runs: dict[str, dict]) -> list[str]:
    names = list(runs)
    out = ["| dataset | KID ARAS replace | KID ARAS grain | KID procedural | KID Perlin | real vs real "
           "| seam replace / grain / procedural / Perlin | samples (real) |", "|---" * 8 + "|"]
    for d in names:
        k, s, n = runs[d]["kid"], runs[d]["seam"], runs[d]["n_kid"]
        out.append(f"| {d} | {f(k['aras_replace'])} | {f(k['aras_grain'])} | {f(k['procedural'])} | {f(k['perlin'])} "
                   f"| {f(runs[d]['kid_real_halves'])} | {' / '.join(f(s[m], 2) for m in ('aras_replace', 'aras_grain', 'procedural', 'perlin'))} "
                   f"| {n['aras_replace']} ({n['real']}) |")
    out += ["", "| dataset | who | " + " | ".join(ATTRIBUTES) + " | n (per attribute) |", "|---" * 7 + "|"]
    for d in names:
        det = runs[d]["attribute_control_detail"]
        for who in ("procedural", *COMPOSITES):
            label = "renders (ceiling)" if who == "procedural" else f"ARAS {who}"
            out.append(f"| {d} | {label} | " + " | ".join(f(det[who][a], 2) for a in ATTRIBUTES)
                       + " | " + " / ".join(str(det[who + "_n"][a]) for a in ATTRIBUTES) + " |")
    out += ["", "| dataset | judge ceiling (held-out renders) | family control replace / grain | of the ceiling "
            "| tokenizer ceiling | ARAS samples/s replace / grain | naive samples/s | speed-up "
            "| `qarad synth` /s (1 / 2 workers) | fit min |", "|---" * 10 + "|"]
    for d in names:
        r = runs[d]
        by = r["language_control_by_composite"]
        sp = r["aras_per_s_by_composite"]
        out.append(f"| {d} | {f(r['judge_ceiling_top1'])} ({r['classifier_n_holdout']}) "
                   f"| {f(by['replace'])} / {f(by['grain'])} | {f(r['family_control_of_ceiling'], 2)} "
                   f"| {f(r['tokenizer_ceiling_top1'])} | {f(sp['replace'], 2)} / {f(sp['grain'], 2)} "
                   f"| {f(r['naive_per_s'], 3)} | {f(r['speedup'], 1)}x "
                   f"| {f(r['cli_per_s']['workers_1'], 2)} / {f(r['cli_per_s']['workers_2'], 2)} "
                   f"| {f(r['fit_minutes'].get(d), 1)} |")
    return out


def verdicts(runs: dict[str, dict]) -> list[str]:
    out = []
    for comp in COMPOSITES:
        le = [d for d, r in runs.items() if r["kid"][f"aras_{comp}"] <= r["kid"]["perlin"]]
        seams = [d for d, r in runs.items()
                 if r["seam"][f"aras_{comp}"] < min(r["seam"]["procedural"], r["seam"]["perlin"])]
        out.append(f"* KID of ARAS `{comp}` <= Perlin on {len(le)} of {len(runs)} ({', '.join(le) or 'none'}); "
                   f"its seam the smallest of the three on {len(seams)} ({', '.join(seams) or 'none'}): "
                   f"**{'met' if len(le) >= 2 and len(seams) == len(runs) else 'not met'}**.")
    for comp in COMPOSITES:
        misses = [f"{d} {a} {f(r['attribute_control_detail'][comp][a], 2)}" for d, r in runs.items() for a in ATTRIBUTES
                  if (r["attribute_control_detail"][comp][a] or 0.0) < ATTRIBUTE_GOAL.get(d, 0.8)]
        out.append(f"* Attribute accuracy of ARAS `{comp}` (>= 0.9 on magnetic tile, >= 0.8 elsewhere): "
                   f"**{'met' if not misses else 'not met'}**" + (f" (below: {'; '.join(misses)})." if misses else "."))
    judge = {d: (r["judge_ceiling_top1"], r["family_control_of_ceiling"]) for d, r in runs.items()}
    ok = all(c >= JUDGE_GOAL and q >= CONTROL_GOAL for c, q in judge.values())
    out.append(f"* Family control >= {CONTROL_GOAL} of a judge whose ceiling is >= {JUDGE_GOAL}: **{'met' if ok else 'not met'}** ("
               + "; ".join(f"{d}: ceiling {f(c)}, control {f(q, 2)} of it" for d, (c, q) in judge.items()) + ").")
    fast = {d: (r["aras_per_s"], r["speedup"]) for d, r in runs.items()}
    ok = all(s >= SPEED_GOAL and x >= SPEEDUP_GOAL for s, x in fast.values())
    out.append(f"* Speed >= {SPEED_GOAL} samples/s and >= {SPEEDUP_GOAL:g}x naive (default composite, library): "
               f"**{'met' if ok else 'not met'}** (" + "; ".join(f"{d}: {f(s, 2)}/s, {f(x, 1)}x" for d, (s, x) in fast.items()) + ").")
    mt = runs.get("magnetic_tile/magnetic_tile")
    if mt is not None:
        fit = mt["fit_minutes"].get("magnetic_tile/magnetic_tile")
        out.append(f"* `qarad fit` <= {FIT_GOAL_MIN:g} min on magnetic tile: **{'met' if fit is not None and fit <= FIT_GOAL_MIN else 'not met'}** "
                   f"({f(fit, 1)} min, the model's timings.json).")
    default, held = composite_choice(runs)
    out.append("* Composite default, leave one dataset out (grain wins a dataset: lower KID than replace, seam no larger "
               "or still below both baselines'): " + "; ".join(f"without {d} the others pick `{c}`" for d, c in held.items())
               + f" -> default **`{default}`**.")
    return out


def main(argv: list[str] | None = None) -> None:
    paths = [Path(p) for p in (argv if argv else sys.argv[1:])] or DEFAULT
    envs = [json.loads(p.read_text()) for p in paths]
    runs = {e["results"]["dataset"]: e["results"] for e in envs}
    for e in envs:
        print(f"<!-- {e['results']['dataset']}: {e['date']}; {e['machine']}; `{e['command']}` -->")
    print("\n".join(tables(runs) + [""] + verdicts(runs)))


if __name__ == "__main__":
    main()
