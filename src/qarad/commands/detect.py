"""What each CLI verb does, as plain functions of parsed arguments (thin layers over the library)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .. import runs
from ..data.io import (atomic_path, check_output_folder, discarded_on_failure, is_image_file, make_folder,
                       write_image, write_json, write_text)
from ..data.mvtec import DatasetError, scan_mvtec, subsample
from ..data.resolution import ResolutionPolicy
from ..progress import bar

METRIC_COLUMNS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def _policy(args) -> ResolutionPolicy:
    return ResolutionPolicy(mode=args.policy, size=args.size, scale=args.scale, overlap=args.overlap)


def _train_config(args) -> dict:
    """config.json, built through the dataclasses runs.read_config checks it against."""
    if args.method == "patchcore":
        detector = runs.PatchCoreSettings(coreset_ratio=args.coreset_ratio, memory_limit=args.memory_limit,
                                          batch_size=args.batch_size, seed=args.seed, search=args.search)
    else:
        detector = runs.QaradSettings(steps=args.steps, synth=str(Path(args.synth).resolve()) if args.synth else None,
                                      weighting=args.weighting, max_normal_views=args.max_normal_views,
                                      batch_size=args.batch_size, seed=args.seed, negatives=tuple(args.negatives),
                                      residual=args.residual, fusion=args.fusion,
                                      perlin_samples=args.perlin_samples if "perlin" in args.negatives else 0,
                                      search=args.search)
    data = runs.RunData(root=str(Path(args.data).resolve()), category=args.category,
                        max_train_images=args.max_train_images, seed=args.seed)
    config = {"method": args.method, "data": asdict(data), "policy": _policy(args).to_dict(),
              "detector": asdict(detector)}
    return json.loads(json.dumps(config))  # as it reads back from config.json (tuples become lists)


def train(args) -> int:
    config = _train_config(args)
    if args.method == "qarad" and "synthetic" in args.negatives and not args.synth:
        raise ValueError("--method qarad needs --synth SYNTH_DIR (made by `qarad synth`, scored by `qarad score`), "
                         "or --negatives without 'synthetic' (perlin, feature)")
    train_set = subsample(scan_mvtec(args.data, args.category, "train"), args.max_train_images, args.seed)
    fresh = not Path(args.out).exists()
    if runs.prepare(args.out, config, args.overwrite):
        print(f"{args.out}: this run is already trained; nothing to do (pass --overwrite to retrain)")
        return 0
    paths = [s.image for s in train_set]
    with discarded_on_failure(args.out, created=fresh):  # a bad input found mid-fit
        model = _train_patchcore(args, config, paths) if args.method == "patchcore" else _train_qarad(args, config, paths)
    model.save(Path(args.out) / runs.MODEL)
    print(f"trained {args.method} on {len(train_set)} normal images, threshold {model.threshold_:.4f}\n"
          f"run folder: {args.out}")
    return 0


def _train_patchcore(args, config, paths):
    from ..detection.patchcore import PatchCore, PatchCoreConfig

    d = config["detector"]
    model = PatchCore(PatchCoreConfig(coreset_ratio=d["coreset_ratio"], memory_limit=d["memory_limit"],
                                      batch_size=d["batch_size"], seed=d["seed"], search=d["search"]), _policy(args)).to(args.device)
    with bar(len(paths), "train patchcore") as tick:
        model.fit(paths, on_image=tick)
    return model


def _train_qarad(args, config, paths):
    from ..detection.segmenter import Segmenter, SegmenterConfig
    from ..detection.train import (describe, fit_detector, normal_features, perlin_features, sample_weights,
                                   synthetic_features)
    from ..quality.weighting import WeightingConfig
    from ..synthesis.jobs import MANIFEST, read_manifest

    d = config["detector"]
    cfg = SegmenterConfig(steps=d["steps"], seed=d["seed"], negatives=tuple(d["negatives"]), residual=d["residual"],
                          fusion=d["fusion"], search=d["search"])
    model = Segmenter(cfg, _policy(args)).to(args.device)
    with bar(len(paths), "features: normal images") as tick:
        normal = normal_features(model, paths, d["batch_size"], d["max_normal_views"], d["seed"], on_image=tick)
    pools = {}
    if "synthetic" in cfg.negatives:
        with bar(len(read_manifest(Path(args.synth) / MANIFEST)), "features: synthetic samples") as tick:
            pools["synthetic"] = synthetic_features(model, Path(args.synth), paths, d["batch_size"], on_image=tick)
        pools["synthetic"].weights = sample_weights(pools["synthetic"].scores, WeightingConfig(calibration=d["weighting"]))
        print(f"QAW weights ({d['weighting']}): {describe(pools['synthetic'])}")
    if "perlin" in cfg.negatives:
        with bar(d["perlin_samples"], "features: Perlin texture patches") as tick:
            pools["perlin"] = perlin_features(model, paths, d["perlin_samples"], d["seed"], d["batch_size"], on_image=tick)
    if cfg.uses_bank:
        print("memory bank from the normal views, then every cached cell's nearest row (own image skipped)")
    with bar(d["steps"], "train detector head", unit="step") as tick:
        fit_detector(cfg, model.policy, normal, pools, on_step=lambda _: tick(), model=model)
    return model


def format_table(overall: dict, per_type: dict) -> str:
    names = ["image AUROC", "image AP", "image F1max", "pixel AUROC", "pixel AP", "pixel F1max", "AUPRO@0.3"]
    lines = [f"{'defect type':<16}{'n':>5} " + " ".join(f"{n:>11}" for n in names)]
    for label, m in [*per_type.items(), ("ALL", overall)]:
        lines.append(f"{label:<16}{m['n_images']:>5} " + " ".join(f"{m[c]:>11.4f}" for c in METRIC_COLUMNS))
    return "\n".join(lines)


def evaluate_run(run: Path, data_root: Path | None = None, allow_missing_masks: bool = False,
                 batch_size: int = 8, device: str = "cpu", curves: bool = False) -> dict:
    from ..detection.evaluate import evaluate

    cfg = runs.read_config(run)
    check_output_folder(run)  # metrics.json goes here: refuse an unwritable run before evaluating
    detector = runs.load_detector(run, device)
    root = Path(data_root or cfg["data"]["root"])
    test = scan_mvtec(root, cfg["data"]["category"], "test", allow_missing_masks=allow_missing_masks)
    with bar(len(test), "eval") as tick:
        ev = evaluate(detector, test, batch_size, on_image=tick, curves=curves)
    result = {"method": cfg["method"], "category": cfg["data"]["category"], "policy": cfg["policy"],
              "threshold": detector.threshold_, "overall": ev.overall, "per_type": ev.per_type,
              "test_images_per_s": ev.images_per_s}
    if curves:
        result["curves"] = ev.curves
    write_json(Path(run) / "metrics.json", result)
    write_text(Path(run) / "scores.csv", _csv(ev.records))
    return result


def eval(args) -> int:  # noqa: A001 (the verb's name)
    result = evaluate_run(args.run, args.data, args.allow_missing_masks, args.batch_size, args.device)
    print(format_table(result["overall"], result["per_type"]))
    print(f"metrics: {Path(args.run) / 'metrics.json'}")
    return 0


def _csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _expand(images: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in images:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if is_image_file(q))
            if not found:
                raise DatasetError(f"{p}: no images found")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    return out


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return stems


def predict_images(detector, paths: list[Path], out: Path, batch_size: int = 8) -> list[dict]:
    """Write overlays and scores.csv for `paths` into `out`, all or nothing."""
    from ..detection.inference import score_images
    from ..report.figures import overlay

    out = check_output_folder(out)  # a file in the way or no permission: refuse before scoring anything
    if out.exists() and any(out.iterdir()) and not (out / "scores.csv").is_file():
        raise runs.RunError(f"{out}: folder is not empty and holds no earlier predictions; choose another --out")
    make_folder(out.parent)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    records = []
    try:
        with bar(len(paths), "predict") as tick:
            for stem, res in zip(_unique_stems(paths), score_images(detector, paths, batch_size, keep_images=True,
                                                                     on_image=tick)):
                full = res.layout.to_source(torch.from_numpy(res.anomaly_map)).numpy()
                write_image(stage / f"{stem}_overlay.png", overlay(res.image, full, detector.threshold_))
                records.append({"image": str(res.path), "score": round(res.score, 6),
                                "threshold": round(detector.threshold_, 6),
                                "anomalous": int(res.score > detector.threshold_), "overlay": f"{stem}_overlay.png"})
        write_text(stage / "scores.csv", _csv(records))
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return records


def predict(args) -> int:
    paths = _expand(args.images)
    detector = runs.load_detector(args.run, args.device)
    out = args.out or Path(args.run) / "predictions"
    records = predict_images(detector, paths, out, args.batch_size)
    flagged = sum(r["anomalous"] for r in records)
    print(f"{len(records)} images scored, {flagged} above the threshold {detector.threshold_:.4f}\n"
          f"scores: {Path(out) / 'scores.csv'}")
    return 0


def _refuse_different(path: Path, data: bytes, overwrite: bool) -> None:
    if path.exists() and not overwrite and (not path.is_file() or path.read_bytes() != data):
        raise runs.RunError(f"{path}: already exists and holds something else; choose another --out or pass "
                            "--overwrite")


def export_run(run: Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """Write RUN's detector as OUT (default RUN/model.onnx) plus the sidecar OUT.json; returns OUT."""
    from ..detection.export import export_onnx, sidecar

    detector = runs.load_detector(run, "cpu")  # a folder that is not a trained run fails here, naming it
    out = Path(out or Path(run) / "model.onnx")
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the output file name must end in .onnx")
    meta = out.with_name(out.name + ".json")  # model.onnx.json: model.json is the run's checkpoint config
    with atomic_path(out) as tmp:  # renamed onto `out` only if nothing below raises
        export_onnx(detector, tmp)
        data = tmp.read_bytes()
        text = json.dumps(sidecar(detector, data), indent=2) + "\n"
        _refuse_different(out, data, overwrite)
        _refuse_different(meta, text.encode("utf-8"), overwrite)
    write_text(meta, text)
    return out


def export(args) -> int:
    out = export_run(args.run, args.out, args.overwrite)
    print(f"ONNX model: {out}\nsidecar (policy, threshold, inputs/outputs): {out}.json")
    return 0


def demo(args) -> int:
    from ..demo import run_demo

    report = run_demo(check_output_folder(args.out), seed=args.seed, quick=args.quick)
    print(f"report: {report}")
    return 0
