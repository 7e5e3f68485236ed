"""The validation split (detection/validation.py), the gate and image rule (detection/fusion.py) and
`--auto` (auto.py) on tiny generated data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qarad import api, runs
from qarad.data.resolution import ResolutionPolicy
from qarad.detection import fusion, validation as V
from qarad.detection.patchcore import PatchCore, PatchCoreConfig
from qarad.detection.segmenter import Segmenter, SegmenterConfig
from qarad.testing import make_mvtec_tree
from qarad.validation_config import ValidationConfig

pytestmark = pytest.mark.usefixtures("one_thread")
POLICY = ResolutionPolicy(size=64)
N_TRAIN = 12  # 15% -> the minimum of 3 held out, 9 trained on
QARAD = SegmenterConfig(steps=4, negatives=("synthetic", "perlin"), search="exact")


def _square_synth(folder: Path, images: list[Path]) -> Path:
    """A synth folder (the `qarad synth` layout) with one bright square drawn on each image, scored."""
    from qarad.synthesis import jobs

    def make(image, _mask, job):
        mask = np.zeros(image.shape[:2], bool)
        mask[8:20, 10:24] = True
        out = image.copy()
        out[mask] = 1.0
        return jobs.Made(out, mask, "a bright square", {})

    jobs.prepare_output(folder, {"method": "square", "n": len(images)})
    jobs.run(jobs.plan(images, ["a bright square"], None, len(images), 0), make, folder, "square", {})
    lines = [json.loads(x) | {"score": 0.5} for x in (folder / jobs.MANIFEST).read_text().splitlines()]
    (folder / jobs.MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in lines))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val")
    root = make_mvtec_tree(tmp / "mvtec", n_train=N_TRAIN, n_good=4, n_defect=4)
    train = sorted((root / "widget" / "train" / "good").glob("*.png"))
    synth = _square_synth(tmp / "synth", train)
    return tmp, root, train, synth


@pytest.fixture(scope="module")
def qarad_run(setup):
    tmp, root, _, synth = setup
    done = api.train(root, "widget", tmp / "run", QARAD, api.QaradTraining(synth=synth, perlin_samples=3), POLICY)
    return done


def test_split_is_seeded_disjoint_and_keeps_enough_on_each_side():
    paths = [Path(f"{i}.png") for i in range(40)]
    a, b = V.split_normals(paths, 0.15, seed=3), V.split_normals(paths, 0.15, seed=3)
    assert a == b and len(a.held) == 6 and not set(a.held) & set(a.train) and len(a.train) == 34
    assert V.split_normals(paths, 0.15, seed=4).held != a.held
    assert V.split_normals(paths, 0.0, 0).held == [] and V.split_normals(paths[:5], 0.15, 0).held == []
    assert len(V.split_normals(paths[:6], 0.15, 0).held) == V.MIN_HELD
    with pytest.raises(ValueError):
        ValidationConfig(val_share=1.0)


def test_held_out_normals_never_enter_the_bank_or_the_head(setup, monkeypatch, tmp_path):
    from qarad.detection import train as T

    _, root, train, synth = setup
    seen = {}
    for name in ("normal_features", "perlin_features", "synthetic_features"):
        real = getattr(T, name)

        def spy(model, *args, _real=real, _name=name, **kwargs):
            seen[_name] = (args, kwargs)
            return _real(model, *args, **kwargs)

        monkeypatch.setattr(T, name, spy)
    pc_paths = []
    real_fit = PatchCore.fit
    monkeypatch.setattr(PatchCore, "fit", lambda self, paths, **k: pc_paths.extend(paths) or real_fit(self, paths, **k))
    done = api.train(root, "widget", tmp_path / "q", QARAD, api.QaradTraining(synth=synth, perlin_samples=3), POLICY)
    held = set(V.split_normals(train, 0.15, QARAD.seed).held)
    assert len(held) == V.MIN_HELD and done.validation["split"]["normal_held_out"] == len(held)
    assert not held & set(seen["normal_features"][0][0]) and not held & set(seen["perlin_features"][0][0])
    assert set(seen["synthetic_features"][1]["held_out"]) == held
    api.train(root, "widget", tmp_path / "p", PatchCoreConfig(), api.QaradTraining(synth=synth), POLICY)
    assert pc_paths and not held & set(pc_paths)


def test_aras_samples_on_held_out_normals_validate_and_do_not_train(setup):
    from qarad.detection.views import synthetic_features
    from qarad.synthesis.jobs import MANIFEST, read_manifest

    _, _, train, synth = setup
    split = V.split_normals(train, 0.15, 0)
    items = V.items(split.held, synth, 0)
    on_held = [e for e in read_manifest(synth / MANIFEST) if Path(e["source"]) in set(split.held)]
    assert sorted(str(i.image) for i in items if i.kind == "aras") == sorted(
        str((synth / e["image"]).resolve()) for e in on_held)
    kinds = [i.kind for i in items]
    assert kinds.count("perlin") == kinds.count("procedural") == len(split.held) == kinds.count("normal")
    model = Segmenter(QARAD, POLICY)
    views = synthetic_features(model, synth, split.train, held_out=split.held)
    assert len(views) == len(train) - len(split.held)  # one view each (resize)
    assert set(views.source.tolist()) == set(range(len(split.train)))


def test_run_stores_validation_and_the_gate_and_old_runs_still_load(qarad_run, tmp_path):
    run = qarad_run.run
    stored = json.loads((run / V.VALIDATION).read_text())
    assert stored["chosen"] == qarad_run.validation["chosen"]
    assert {r["head_weight"] for r in stored["grid"]} == set(fusion.HEAD_WEIGHTS)
    assert {"aras", "perlin", "procedural", "both"} == set(stored["by_source"])
    assert stored["source"] == "procedural"  # defects the head never learned from choose (validation.py)
    sizes = {r["source"]: r["n_images"] for r in stored["grid"]}
    held, aras = stored["split"]["normal_held_out"], stored["split"]["aras_samples"]
    assert sizes == {"aras": held + aras, "perlin": 2 * held, "procedural": 2 * held, "both": 2 * held + aras}
    model = runs.load_detector(run)
    assert model.head_weight_ == stored["chosen"]["head_weight"] and model.image_rule_ == stored["chosen"]["image_rule"]
    assert model.threshold_ == pytest.approx(qarad_run.threshold)
    # a run written before the split and the gate: config.json without val_share, model.json without the gate
    old = tmp_path / "old"
    old.mkdir()
    for f in ("model.safetensors", "model.json", "config.json"):
        (old / f).write_bytes((run / f).read_bytes())
    cfg = json.loads((old / "config.json").read_text())
    del cfg["detector"]["val_share"]
    (old / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((old / "model.json").read_text())
    del meta["head_weight"], meta["image_rule"]
    (old / "model.json").write_text(json.dumps(meta))
    loaded = runs.load_detector(old)
    assert (loaded.head_weight_, loaded.image_rule_) == (fusion.LEGACY_HEAD_WEIGHT, "max")
    assert runs.read_config(old)["detector"].get("val_share") is None
    _, no_split = api.run_config(cfg["data"]["root"], "widget", QARAD, api.QaradTraining(
        synth=cfg["detector"]["synth"], perlin_samples=3), POLICY, validation=ValidationConfig(val_share=0.0))
    assert runs.holds(old, no_split)  # an old run is the run with --val-share 0


def test_procedural_validation_defects_are_drawn_and_marked(setup):
    _, _, train, _ = setup
    item = V.Item("procedural", Path(train[0]), seed=3)
    loaded, mask = V._load(0, item, 0, POLICY)
    again, same = V._load(0, item, 0, POLICY)
    assert mask.any() and (mask == same).all()  # a defect, the same one each time (seeded)
    normal, _ = V._load(0, V.Item("normal", Path(train[0])), 0, POLICY)
    assert not np.allclose(loaded.image, normal.image)


def test_report_shows_the_validation_split(qarad_run):
    api.evaluate(qarad_run.run)
    assert "Validation split" in (qarad_run.run / "report.html").read_text()


def test_head_weight_zero_is_the_memory_bank_alone(qarad_run):
    """w = 0: the map is PatchCore's (same bank, exact search) up to one affine map."""
    model = runs.load_detector(qarad_run.run)
    pc = PatchCore(PatchCoreConfig(search="exact", refine=0.0), POLICY, model._embedder().backbone)
    pc._set_memory(model.memory_, model.memory_source_)
    views = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.head_weight_ = 0.0
    ref = model.reference_
    expected = 2.0 * (pc.view_maps(views) - ref.dist_mean) / ref.dist_std
    torch.testing.assert_close(model.view_maps(views), expected, rtol=1e-4, atol=1e-4)
    model.head_weight_ = 0.5
    assert not torch.allclose(model.view_maps(views), expected, atol=1e-3)  # the head counts


def test_fuse_half_is_the_legacy_sum_and_rules_score_by_hand():
    zl, zd = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(fusion.fuse(zl, zd, 0.5), zl + zd)
    assert torch.equal(fusion.fuse(None, zd, 0.0), 2 * zd)
    assert torch.allclose(fusion.fuse(zl, zd, 1.0), 2 * zl)
    m = torch.arange(100.0).reshape(10, 10)
    assert float(fusion.image_score(m, "max")) == 99.0
    assert float(fusion.image_score(m, "top-5%")) == pytest.approx(97.0)  # mean of 95..99
    assert float(fusion.image_score(m, "top-1%")) == 99.0
    with pytest.raises(ValueError):
        fusion.check_rule("top-x%")


def test_best_prefers_the_bank_on_ties():
    rows = [{"source": "both", "head_weight": w, "image_rule": "max", "criterion": c}
            for w, c in ((0.0, 0.8), (0.5, 0.8), (1.0, 0.7))]
    assert V.best(rows, "both")["head_weight"] == 0.0
    rows[1]["criterion"] = 0.81
    assert V.best(rows, "both")["head_weight"] == 0.5


def test_auto_respects_its_budget_and_writes_candidates(setup, tmp_path):
    from qarad.auto import CANDIDATES, AutoConfig, train_auto

    _, root, _, synth = setup
    done = train_auto(root, "widget", tmp_path / "auto", QARAD, api.QaradTraining(synth=synth, perlin_samples=3),
                      POLICY, AutoConfig(budget_min=1e-4))
    table = json.loads((tmp_path / "auto" / CANDIDATES).read_text())
    status = [c["status"] for c in table["candidates"]]
    assert status[0] == "trained" and set(status[1:]) == {"skipped: over the budget"}  # only the first fits
    assert table["chosen"] == done.chosen == table["candidates"][0]["name"]
    assert not list(tmp_path.glob(".auto.auto-*"))  # the scratch folder is gone
    assert runs.load_detector(tmp_path / "auto").threshold_ == pytest.approx(done.trained.threshold)
    assert "candidates tried" in (api.evaluate(tmp_path / "auto") and (tmp_path / "auto" / "report.html").read_text())


def test_auto_estimates_keep_each_started_candidate_within_the_budget(setup, tmp_path):
    from qarad.auto import AutoConfig, train_auto

    _, root, _, _ = setup
    done = train_auto(root, "widget", tmp_path / "a", SegmenterConfig(steps=2, negatives=("perlin",)),
                      api.QaradTraining(perlin_samples=2), POLICY, AutoConfig(budget_min=0.5))
    started = [c for c in done.candidates[1:] if c["status"] == "trained"]
    assert started and all(c["started_at_s"] + c["estimate_s"] <= done.budget_s for c in started)
    assert {c["method"] for c in done.candidates} == {"qarad", "patchcore"}


def test_train_cli_val_share_zero_is_the_run_as_before(setup, tmp_path, capsys):
    from qarad.cli import main

    _, root, _, _ = setup
    out = tmp_path / "cli"
    assert main(["train", "--method", "patchcore", "--data", str(root), "--category", "widget", "--out", str(out),
                 "--size", "64", "--val-share", "0"]) == 0
    assert "validation: no split" in capsys.readouterr().out and not (out / V.VALIDATION).exists()
    assert runs.read_config(out)["detector"]["val_share"] == 0.0


def test_benchmark_auto_runs_train_auto_per_category(setup, tmp_path, capsys):
    from qarad.cli import main

    _, root, _, _ = setup
    out = tmp_path / "bench"
    argv = ["benchmark", "--method", "patchcore", "--data", str(root), "--out", str(out), "--size", "64", "--auto",
            "--budget-min", "0.0001"]
    assert main(argv) == 0
    run = out / "runs" / "widget"
    assert (run / "candidates.json").is_file() and (run / "row.json").is_file() and (run / "metrics.json").is_file()
    assert json.loads((run / "candidates.json").read_text())["chosen"].startswith("patchcore-")
    before = (run / "row.json").stat().st_mtime_ns, (run / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0  # finished: skipped, not retrained
    assert ((run / "row.json").stat().st_mtime_ns, (run / "model.safetensors").stat().st_mtime_ns) == before


def test_restrict_lowers_the_backdrop_to_the_part_minimum():
    from qarad.detection.scoring_region import restrict

    m = torch.arange(16.0).reshape(4, 4)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:3] = True
    out = restrict(m, region)
    assert torch.equal(out[region], m[region]) and (out[~region] == m[region].min()).all()
    assert torch.equal(restrict(m, torch.ones(4, 4, dtype=torch.bool)), m)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tree of grainy parts on a plain dark backdrop (the foreground estimate finds them)."""
    from PIL import Image

    from qarad.testing import part_on_backdrop

    root = tmp_path_factory.mktemp("parts") / "mvtec"
    rng = np.random.default_rng(0)
    for split, n in (("train/good", N_TRAIN), ("test/good", 3)):
        folder = root / "part" / split
        folder.mkdir(parents=True)
        for i in range(n):
            image, _ = part_on_backdrop(rng)
            Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_the_part_only_region_is_a_gate_candidate_and_round_trips(parts, tmp_path):
    done = api.train(parts, "part", tmp_path / "run", SegmenterConfig(steps=4, negatives=("perlin",)),
                     api.QaradTraining(perlin_samples=3), POLICY)
    assert {r["foreground"] for r in done.validation["grid"]} == {False, True}  # a plain backdrop: both tried
    assert "scoring region" in done.validation["chosen"]["note"]
    model = runs.load_detector(tmp_path / "run")
    assert (model.foreground_ is not None) == done.validation["chosen"]["foreground"]
    model.foreground_ = V._foreground(V.split_normals(sorted((parts / "part/train/good").glob("*.png")), 0.15, 0).train)
    model.save(tmp_path / "run" / "model")
    again = runs.load_detector(tmp_path / "run")
    assert again.foreground_.threshold_ == model.foreground_.threshold_
    assert (again.foreground_.layout_ is None) == (model.foreground_.layout_ is None)
    from qarad.detection.inference import score_images

    paths = sorted((parts / "part/test/good").glob("*.png"))
    a = [r.anomaly_map for r in score_images(model, paths)]
    b = [r.anomaly_map for r in score_images(again, paths)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    model.foreground_ = None
    c = [r.anomaly_map for r in score_images(model, paths)]
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))  # the region changed the maps


def test_export_carries_the_gate_and_the_image_rule(qarad_run, setup, tmp_path):
    import onnxruntime as ort

    from qarad.data.stream import load
    from qarad.detection.export import export_onnx, sidecar
    from qarad.detection.inference import score_images

    model = runs.load_detector(qarad_run.run)
    model.head_weight_, model.image_rule_ = 0.25, "top-5%"
    export_onnx(model, tmp_path / "m.onnx")
    paths = sorted((setup[1] / "widget" / "test").rglob("*.png"))
    views = torch.cat([load(i, p, POLICY).views for i, p in enumerate(paths)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    _, anomaly_map, score = ort.InferenceSession(str(tmp_path / "m.onnx"), options).run(None, {"views": views.numpy()})
    expected = np.asarray([r.score for r in score_images(model, paths)])
    assert np.abs(score - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    assert not np.allclose(score, anomaly_map.reshape(len(score), -1).max(1))  # the rule, not the maximum
    meta = sidecar(model, b"")
    assert meta["image_rule"] == "top-5%" and meta["head_weight"] == 0.25 and meta["scoring_region"] == "the whole image"


def test_train_cli_auto_prints_the_choice_and_refuses_a_budget_without_auto(setup, tmp_path, capsys):
    from qarad.cli import main

    _, root, _, _ = setup
    base = ["train", "--method", "patchcore", "--data", str(root), "--category", "widget", "--size", "64"]
    assert main([*base, "--out", str(tmp_path / "a"), "--auto", "--budget-min", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "--auto: 1 of" in out and "chosen patchcore-resize64" in out and "candidates.json" in out
    assert main([*base, "--out", str(tmp_path / "b"), "--budget-min", "5"]) != 0
    assert "--budget-min is the budget of --auto" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
