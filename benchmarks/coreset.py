"""Exact greedy coreset vs the partitioned greedy that PatchCore uses, side by side in one run.

    python benchmarks/coreset.py [--data ../shared/data]

On MPDD metal_plate (54k patches: exact greedy is affordable) both variants build a 10% bank
from the same features and are scored on the same test set; on magnetic tile (~780k patches)
only the partitioned variant's selection time is measured. Writes
benchmarks/results/coreset.json and the coreset table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from qarad.data.layouts import scan  # noqa: E402
from qarad.data.stream import iter_loaded, map_views  # noqa: E402
from qarad.detection.coreset import CoresetSampler  # noqa: E402
from qarad.detection.evaluate import evaluate  # noqa: E402
from qarad.detection.patchcore import PatchCore, PatchCoreConfig  # noqa: E402

EXACT = 10**9  # a partition larger than any bank: one exact greedy over everything


def features(model: PatchCore, paths) -> tuple[torch.Tensor, torch.Tensor]:
    feats, srcs = [], []
    with torch.inference_mode():
        for item, emb in map_views(iter_loaded(paths, model.policy), model.embedder, 8):
            f = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            feats.append(f)
            srcs.append(torch.full((len(f),), item.index, dtype=torch.int32))
    return torch.cat(feats), torch.cat(srcs)


def select(feats, srcs, partition: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    t0 = time.perf_counter()
    sampler = CoresetSampler(0.1, 128, partition, seed=0)
    for s in range(0, len(feats), 1024):  # arrive in image-sized chunks, as during fit
        sampler.add(feats[s:s + 1024], srcs[s:s + 1024])
    memory, source = sampler.result()
    return memory, source, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    args = ap.parse_args()
    results: dict = {}
    rows = ["| dataset | coreset | patches | bank rows | selection s | image AUROC | pixel AUROC | AUPRO |",
            "|---|---|---|---|---|---|---|---|"]
    for key, variants in (("mpdd/metal_plate", {"exact": EXACT, "partitioned": 16384}),
                          ("magnetic_tile/magnetic_tile", {"partitioned": 16384})):
        if not common.available(args.data, key):
            print(f"skip {key}: not found", file=sys.stderr)
            continue
        root, cat = common.DATASETS[key]
        model = PatchCore(PatchCoreConfig())
        feats, srcs = features(model, [s.image for s in scan(args.data / root, cat, "train", "mvtec")])
        test = scan(args.data / root, cat, "test", "mvtec") if key == "mpdd/metal_plate" else None
        for name, partition in variants.items():
            memory, source, seconds = select(feats, srcs, partition)
            r = {"patches": len(feats), "bank_rows": len(memory), "selection_s": round(seconds, 1)}
            if test is not None:
                model._set_memory(memory, source)
                model.threshold_ = float("inf")
                ev = evaluate(model, test)
                r.update({m: ev.overall[m] for m in ("image_auroc", "pixel_auroc", "aupro")})
            results.setdefault(key, {})[name] = r
            cells = [f"{r.get(m, float('nan')):.3f}" if m in r else "-" for m in ("image_auroc", "pixel_auroc", "aupro")]
            rows.append(f"| `{key}` | {name} | {r['patches']} | {r['bank_rows']} | {r['selection_s']:.1f} | "
                        + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    common.write_json(common.RESULTS / "coreset.json", common.envelope(results))
    common.update_section("coreset", "\n".join(rows))


if __name__ == "__main__":
    main()
