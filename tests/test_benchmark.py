"""`qarad benchmark` (benchmarking.py) and the layouts through the CLI verbs, on tiny generated trees."""
import csv
import json

import pytest

from qarad.cli import main
from qarad.metrics import METRICS
from qarad.testing import make_btad_tree, make_folder_tree, make_mvtec_tree, make_visa_tree

SMALL = ["--size", "64"]  # PatchCore on 64 x 64 views: about a second per category


def _two_categories(kind: str, root):
    if kind == "mvtec":
        make_mvtec_tree(root, "a", n_train=4, size=(64, 64))
        make_mvtec_tree(root, "b", n_train=4, size=(64, 64))
        return ["a", "b"]
    if kind == "visa":
        make_visa_tree(root, objects=("candle", "pcb1"), n_train=4, size=(64, 64))
        return ["candle", "pcb1"]
    make_btad_tree(root, "01", n_train=4, size=(64, 64))
    make_btad_tree(root, "02", n_train=4, size=(64, 64), image_suffix=".png")
    return ["01", "02"]


@pytest.mark.parametrize("kind", ["mvtec", "visa", "btad"])
def test_benchmark_resumes_by_category_and_writes_one_table(tmp_path, capsys, kind):
    data, out = tmp_path / "data", tmp_path / "bench"
    first, second = _two_categories(kind, data)
    argv = ["benchmark", "--data", str(data), "--method", "patchcore", "--out", str(out), *SMALL]
    assert main([*argv, "--categories", first]) == 0  # as if killed after the first category
    model = out / "runs" / first / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"benchmark [1/2] {first}: finished earlier, skipped" in captured.err
    assert f"benchmark [2/2] {second}: train" in captured.err
    assert model.stat().st_mtime_ns == stamp  # not retrained
    table = json.loads((out / "benchmark.json").read_text())
    assert list(table["categories"]) == [first, second] and table["settings"]["data"]["layout"] == kind
    for row in [*table["categories"].values(), table["mean"]]:
        assert set(METRICS) | {"fit_s", "test_images_per_s"} <= set(row)
    assert table["categories"][first]["image_auroc"] > 0.6  # bright squares on noise
    rows = list(csv.DictReader(open(out / "benchmark.csv")))
    assert [r["category"] for r in rows] == [first, second, "mean"]
    md = (out / "benchmark.md").read_text()
    assert "| **mean** |" in md and "AUPRO@0.3" in md and "img/s" in md and md.strip() in captured.out


def test_half_finished_category_is_completed_not_taken_as_finished(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "bench"
    make_mvtec_tree(data, "a", n_train=4, size=(64, 64))
    argv = ["benchmark", "--data", str(data), "--out", str(out), *SMALL]
    assert main(argv) == 0
    run = out / "runs" / "a"
    stamp = (run / "model.safetensors").stat().st_mtime_ns
    for name in ("row.json", "metrics.json", "scores.csv"):  # killed while evaluating
        (run / name).unlink()
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "finished earlier" not in err and "benchmark [1/1] a: eval" in err
    assert (run / "row.json").is_file() and (run / "model.safetensors").stat().st_mtime_ns == stamp
    (run / "row.json").unlink()
    (run / "fit.json").unlink()  # killed between saving the model and writing its time
    assert main(argv) == 0
    assert "training again" in capsys.readouterr().err and (run / "fit.json").is_file()


def test_other_settings_are_refused_unless_overwrite(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "bench"
    make_mvtec_tree(data, "a", n_train=4, size=(64, 64))
    assert main(["benchmark", "--data", str(data), "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--size", "96"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert json.loads((out / "benchmark.json").read_text())["settings"]["policy"]["size"] == 64
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--size", "96", "--overwrite"]) == 0
    assert json.loads((out / "benchmark.json").read_text())["settings"]["policy"]["size"] == 96


def test_qarad_method_with_perlin_negatives_needs_no_aras_model(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "bench"
    make_mvtec_tree(data, "a", n_train=4, size=(64, 64))
    base = ["benchmark", "--data", str(data), "--method", "qarad", "--out", str(out), *SMALL]
    assert main(base) == 2  # default negatives include ARAS samples: the same refusal as `qarad train`
    assert "--synth" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--negatives", "perlin", "--steps", "3", "--perlin-samples", "4"]) == 0
    assert json.loads((out / "benchmark.json").read_text())["settings"]["detector"]["negatives"] == ["perlin"]


def test_benchmark_refuses_unknown_categories_and_foreign_folders(tmp_path, capsys):
    data = make_mvtec_tree(tmp_path / "data", "a", n_train=4)
    assert main(["benchmark", "--data", str(data), "--categories", "zz", "--out", str(tmp_path / "b")]) == 2
    assert "no category 'zz'" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["benchmark", "--data", str(data), "--out", str(tmp_path / "busy")]) == 2
    assert "is not a qarad benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["visa", "btad"])
def test_train_and_eval_detect_the_layout(tmp_path, capsys, kind):
    data, run = tmp_path / "data", tmp_path / "run"
    category = _two_categories(kind, data)[0]
    assert main(["train", "--data", str(data), "--category", category, "--out", str(run), *SMALL]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["layout"] == kind
    assert main(["eval", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"anomaly" if kind == "visa" else "ko"}
    capsys.readouterr()
    assert main(["eval", str(run), "--layout", "mvtec"]) == 2  # --layout overrides the run's: read as MVTec AD
    assert str(data / category) in capsys.readouterr().err


def test_folder_layout_train_eval_never_tests_on_training_images(tmp_path, capsys):
    data, run = make_folder_tree(tmp_path / "parts", n_normal=10), tmp_path / "run"
    folders = ["--normal-dir", "good", "--abnormal-dir", "bad", "--mask-dir", "masks"]
    assert main(["train", "--data", str(data), "--category", "parts", "--out", str(run), *folders, *SMALL]) == 0
    assert "on 8 normal images" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())["data"]
    assert config["layout"] == "folder" and config["folder"]["normal_dir"] == "good"
    assert main(["eval", str(run)]) == 0
    scored = {r["path"] for r in csv.DictReader(open(run / "scores.csv"))}
    assert len(scored) == 5  # 2 held-out normals + 3 defects
    from qarad.data.layouts import FolderSplit, scan
    train = {str(s.image) for s in scan(data, "parts", "train", folder=FolderSplit("good", "bad", "masks"))}
    assert not train & scored
    assert main(["train", "--data", str(data), "--category", "parts", "--out", str(tmp_path / "r2"),
                 "--layout", "mvtec", *folders]) == 2
    assert "belong to --layout folder" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--category", "parts", "--out", str(tmp_path / "r3"),
                 "--abnormal-dir", "bad"]) == 2
    assert "need --normal-dir" in capsys.readouterr().err


def test_benchmark_takes_the_train_flags_and_is_in_the_api():
    import qarad
    from qarad import benchmarking
    from qarad.cli import main_parser

    subs = next(a for a in main_parser()._actions if a.dest == "verb")
    flags = {verb: {a.dest: a.default for a in subs.choices[verb]._actions} for verb in ("train", "benchmark")}
    # --defect-prompt names one category's types; benchmark's --real-defects is a root (ROOT/CATEGORY)
    shared = set(flags["train"]) - {"category", "defect_prompt"}
    assert {"real_defects", "shots", "shot_seed", "real_weight"} <= shared
    assert shared <= set(flags["benchmark"]) and all(flags["train"][k] == flags["benchmark"][k] for k in shared)
    assert qarad.benchmark is benchmarking.benchmark


def test_runs_and_models_written_before_layouts_existed_still_match(tmp_path, capsys):
    """config.json / aras.json "data" without the layout keys (earlier versions) read as an MVTec AD run."""
    from qarad.synthesis import model as M
    from qarad.testing import make_tiny_aras

    data, run = make_mvtec_tree(tmp_path / "data", n_train=4, size=(64, 64)), tmp_path / "run"
    argv = ["train", "--data", str(data), "--category", "widget", "--out", str(run), *SMALL]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["data"].pop("layout"), config["data"].pop("folder")) == ("mvtec", None)
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(argv) == 0 and "already trained" in capsys.readouterr().out
    folder = make_tiny_aras(tmp_path / "model")
    meta = json.loads((folder / M.CONFIG).read_text())
    del meta["data"]["layout"], meta["data"]["folder"]
    (folder / M.CONFIG).write_text(json.dumps(meta))
    assert M.prepare_folder(folder, M.read_config(folder)) is False  # the same fit: kept, resumable


def test_fit_reads_its_images_through_the_layout(tmp_path, monkeypatch):
    from qarad import api
    from qarad.synthesis.fit import normal_images

    data = make_btad_tree(tmp_path / "btad", "01", n_train=5)
    picked = normal_images(data, ["01"], 3, 0, "auto")
    assert len(picked) == 3 and {p.parent for p in picked} == {data / "01" / "train" / "ok"}
    seen = {}
    monkeypatch.setattr(api, "fit", lambda *a, **k: seen.update(args=a) or api.Fitted(tmp_path, 0.0))
    assert main(["fit", "--data", str(data), "--category", "01", "--out", str(tmp_path / "m"), "--layout", "btad"]) == 0
    assert seen["args"][-3:] == ("btad", None, "cpu")  # layout, folder split, device
    parts = make_folder_tree(tmp_path / "parts")
    assert main(["fit", "--data", str(parts), "--category", "parts", "--out", str(tmp_path / "m"),
                 "--normal-dir", "good", "--split-seed", "5"]) == 0
    assert seen["args"][-2].normal_dir == "good" and seen["args"][-2].seed == 5


QARAD_SHORT = ["--method", "qarad", "--negatives", "perlin", "--steps", "3", "--perlin-samples", "4", *SMALL]


def test_benchmark_with_real_defects_trains_each_category_on_its_own_shots(tmp_path, capsys):
    from qarad import runs

    data, out = tmp_path / "data", tmp_path / "bench"
    for category in ("a", "b"):  # 2 defects per type (crack, scratch): 1 shot each, 1 left to test
        make_mvtec_tree(data, category, n_train=4, n_good=3, n_defect=4, size=(64, 64))
    argv = ["benchmark", "--data", str(data), "--out", str(out), *QARAD_SHORT, "--real-defects", str(data),
            "--shots", "1", "--shot-seed", "3", "--real-weight", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "benchmark.json").read_text())
    assert table["settings"]["data"]["real_defects"] == {"root": str(data.resolve()), "shots": 1, "seed": 3}
    assert table["settings"]["detector"]["negatives"] == ["perlin", "real"]
    assert table["settings"]["detector"]["real_weight"] == 2.0
    for category in ("a", "b"):
        run = out / "runs" / category
        real = runs.RunData(**runs.read_config(run)["data"]).real
        assert real.sources == (str((data / category).resolve()),) and (real.shots, real.seed) == (1, 3)
        assert len(real.defects) == 2 and all(f"/{category}/test/" in d.image for d in real.defects)
        excluded = json.loads((run / "metrics.json").read_text())["excluded_real_defects"]
        assert excluded["images"] == sorted(d.image for d in real.defects)
        row = table["categories"][category]
        assert row["n_excluded"] == excluded["count"] == 2 and row["n_test"] == 3 + 4 - 2
    md = (out / "benchmark.md").read_text()
    assert "K=1 real defect shots per type" in md and "| shots left out |" in md and md.strip() in printed
    assert [r["n_excluded"] for r in csv.DictReader(open(out / "benchmark.csv"))] == ["2", "2", ""]
    assert main(argv) == 0  # the same shots make the same runs: resumed, not retrained
    assert "b: finished earlier, skipped" in capsys.readouterr().err


def test_benchmark_refuses_real_defects_with_patchcore_or_without_defects(tmp_path, capsys):
    data, real, out = tmp_path / "data", tmp_path / "real", tmp_path / "bench"
    for category in ("a", "b"):
        make_mvtec_tree(data, category, n_train=4, size=(64, 64))
    argv = ["benchmark", "--data", str(data), "--out", str(out), *SMALL, "--real-defects"]
    assert main([*argv, str(data), "--method", "patchcore"]) == 2
    assert "PatchCore learns from normal images only" in capsys.readouterr().err
    make_mvtec_tree(real, "a")
    assert main([*argv, str(real), *QARAD_SHORT]) == 2  # real/b is missing
    err = capsys.readouterr().err
    assert "category 'b'" in err and f"{real / 'b'}: real defects folder not found" in err
    make_mvtec_tree(real, "b", n_defect=0)  # test/good only
    assert main([*argv, str(real), *QARAD_SHORT]) == 2
    assert f"{real / 'b' / 'test'}: no defect images" in capsys.readouterr().err
    assert not out.exists()  # every category's shots are checked before any training
