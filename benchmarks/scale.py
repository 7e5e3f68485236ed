"""Data-parallel fit: tokenizer and prior steps/s with 1 and 2 processes (torchrun, gloo on CPU).

    python benchmarks/scale.py [--data ROOT] [--steps 40] [--processes 1 2] [--gpu]

On magnetic tile (`DATA/magnetic_tile`, skipped cleanly when absent) the corpus is rendered once
(`--corpus-size` windows, default FitConfig otherwise) and the prior's inputs are encoded with an
untrained tokenizer (a step costs the same whatever the codes). Then, for each process count N,
`torchrun --nproc-per-node N` runs this script's worker: `fit_tokenizer` and `fit_prior` at the
default model sizes and global batch (FitConfig.batch_size = 8, so each of N processes takes 8/N
windows), `--steps` steps each into a temporary folder, each process with cores/N threads. Steps/s
is timed from the end of step `WARMUP` to the last step (building the models, loading the
perceptual backbone and DDP's first synchronisation are left out). `--gpu` adds one process on
CUDA when a GPU is present ("gpu" stays null otherwise).

Writes benchmarks/results/scale.json: results = {"processes": {"1": {...}, "2": {...}}, "gpu": ...},
each {tokenizer_steps_per_s, prior_steps_per_s, threads_per_process, local_batch}.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WARMUP = 3  # steps left out of the timing
KEY = "magnetic_tile/magnetic_tile"


def _timed(fit, steps: int) -> float:
    """Steps/s of `fit(on_step)` from the end of step WARMUP to the end of the last."""
    stamps: list[float] = []
    fit(lambda loss: stamps.append(time.perf_counter()))
    if len(stamps) <= WARMUP:
        raise ValueError(f"--steps must exceed {WARMUP}")
    return (len(stamps) - WARMUP) / (stamps[-1] - stamps[WARMUP - 1])


def worker(work: Path, steps: int, device: str) -> None:
    """One torchrun process: time both stages; rank 0 writes WORK/result-N.json."""
    from dataclasses import replace

    from qarad import checkpoint, distributed
    from qarad.synthesis import corpus as C
    from qarad.synthesis import fit as F
    from qarad.synthesis import loops as L
    from qarad.synthesis import model as M

    cfg = replace(M.FitConfig(), tokenizer_steps=steps, prior_steps=steps, checkpoint_every=10 ** 9)
    corpus = C.load_corpus(work / "corpus")
    inputs = checkpoint.read_tensors(work / "prior_inputs")
    with distributed.session(device) as dev:
        n, state = distributed.world_size(), work / f"state-{distributed.world_size()}-{dev.type}"
        state.mkdir(exist_ok=True)
        tok = _timed(lambda cb: L.fit_tokenizer(corpus, cfg, state / "tokenizer", cb, dev), steps)
        pri = _timed(lambda cb: L.fit_prior(inputs["codes"], inputs["token_masks"].bool(), inputs["text"], cfg,
                                            state / "prior", cb, dev), steps)
        if distributed.is_main():
            import torch

            result = {"tokenizer_steps_per_s": round(tok, 3), "prior_steps_per_s": round(pri, 3),
                      "threads_per_process": torch.get_num_threads(), "local_batch": cfg.batch_size // n,
                      "device": str(dev)}
            (work / f"result-{n}-{dev.type}.json").write_text(json.dumps(result))


def prepare(work: Path, root: Path, category: str, corpus_size: int) -> None:
    """Render the corpus and encode the prior's inputs once, into WORK."""
    from dataclasses import replace

    import torch

    from qarad import checkpoint
    from qarad.data.resolution import ResolutionPolicy
    from qarad.synthesis import corpus as C
    from qarad.synthesis import fit as F
    from qarad.synthesis import loops as L
    from qarad.synthesis import model as M
    from qarad.synthesis.tokenizer import VQTokenizer

    cfg = replace(M.FitConfig(), corpus_size=corpus_size)
    paths = F.normal_images(root, [category], None, cfg.seed)
    corpus = C.build_corpus(paths, ResolutionPolicy(), cfg)
    C.save_corpus(work / "corpus", corpus)
    torch.manual_seed(0)
    codes, token_masks = L.encode_corpus(VQTokenizer(cfg.tokenizer).eval(), corpus, cfg)
    checkpoint.save(work / "prior_inputs", {"codes": codes, "token_masks": token_masks.to(torch.uint8),
                                            "text": L.text_embeddings(corpus.prompts)}, {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work: Path, n: int, steps: int, device: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "QARAD_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(Path(__file__).resolve()), "--worker", str(work),
           "--steps", str(steps), "--device", device]
    subprocess.run(cmd, env=env, check=True)
    return json.loads((work / f"result-{n}-{'cuda' if device == 'cuda' else 'cpu'}.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="data root holding magnetic_tile/")
    ap.add_argument("--category", default=None, help="MVTec root/category under --data (default magnetic tile's)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--corpus-size", type=int, default=400)
    ap.add_argument("--gpu", action="store_true", help="also time one process on CUDA, when present")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "scale.json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.device)
    root_name, category = common.DATASETS[KEY]
    if args.category:
        root_name, category = args.category.split("/")
    root = args.data / root_name
    if not (root / category / "train" / "good").is_dir():
        print(f"skipped: no {root / category / 'train' / 'good'}")
        return
    cores = os.cpu_count() or 1
    results: dict = {"processes": {}, "gpu": None}
    with tempfile.TemporaryDirectory(prefix="qarad-scale-") as tmp:
        work = Path(tmp)
        prepare(work, root, category, args.corpus_size)
        for n in args.processes:
            results["processes"][str(n)] = launch(work, n, args.steps, "cpu", max(1, cores // n))
            print(f"{n} process(es): {results['processes'][str(n)]}", flush=True)
        import torch

        if args.gpu and torch.cuda.is_available():
            results["gpu"] = launch(work, 1, args.steps, "cuda", max(1, cores))
            print(f"gpu: {results['gpu']}", flush=True)
    results["settings"] = {"dataset": f"{root_name}/{category}", "steps": args.steps, "warmup_steps": WARMUP,
                           "corpus_size": args.corpus_size, "global_batch": 8, "cores": cores}
    common.write_json(args.out, common.envelope(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
