"""Rewrite BENCHMARKS.md sections from the JSON of benchmark runs made with --no-markdown.

    python benchmarks/sections.py speed stage_profile huge_predict \\
        search=benchmarks/results/search_magnetic_tile.json,benchmarks/results/search_mpdd_deeppcb.json

NAME is a benchmark script; NAME=JSON[,JSON...] merges the results of several runs of it (one
dataset each) into its usual JSON first, each dataset keeping the command and date of its run.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# script -> (its JSON under benchmarks/results, its BENCHMARKS.md section)
SECTIONS = {"speed": ("speed.json", "speed"), "stage_profile": ("profile.json", "profile"),
            "search": ("search.json", "search"), "huge_predict": ("huge_predict.json", "huge_predict"),
            "eval_check": ("eval_check.json", "eval_check")}


def merged(paths: list[Path]) -> dict:
    envs = [json.loads(p.read_text()) for p in paths]
    out = {**envs[-1], "results": {}}
    for env in envs:
        out["results"].update(env["results"])
    out["command"] = " ; ".join(env["command"] for env in envs)
    out["date"] = " ; ".join(env["date"] for env in envs)
    return out


def main(argv: list[str] | None = None) -> None:
    for arg in argv if argv is not None else sys.argv[1:]:
        name, _, sources = arg.partition("=")
        file, section = SECTIONS[name]
        target = common.RESULTS / file
        env = merged([Path(p) for p in sources.split(",")]) if sources else json.loads(target.read_text())
        if sources:
            common.write_json(target, env)
        common.update_section(section, importlib.import_module(name).markdown(env))
        print(f"{section}: rewritten from {sources or target}")


if __name__ == "__main__":
    main()
