"""Issue "Nothing lost, nothing crashes": no verb deletes or overwrites what qarad did not make, every
path read from a manifest or csv stays under its root, and a second writer of a folder is refused."""
import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import make_mvtec_tree
from qarad import owned
from qarad.cli import main
from qarad.testing import make_synth_setup, make_visa_tree

pytestmark = pytest.mark.usefixtures("one_thread")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not owned.is_bookkeeping(p.name)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root = make_mvtec_tree(base / "mvtec")
    run = base / "run"
    assert main(["train", "--data", str(root), "--category", "widget", "--out", str(run), "--size", "64"]) == 0
    assert main(["eval", str(run)]) == 0
    return root, run


@pytest.fixture(scope="module")
def synth_setup(tmp_path_factory):
    return make_synth_setup(tmp_path_factory.mktemp("synth"), [(64, 64), (64, 64)])


def _synth(model, images, out, n=2, *extra):
    return main(["synth", str(model), "--images", str(images), "--prompts", "a thin dark scratch", "--n", str(n),
                 "--out", str(out), "--auto-masks", *extra])


# ---- case 1: predict --out ----------------------------------------------------------------------
def test_predict_into_the_run_folder_is_refused_and_the_run_kept(trained, capsys):
    root, run = trained
    before = _digest(run)
    assert main(["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", str(run)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert _digest(run) == before


def test_predict_into_a_user_folder_holding_a_scores_csv_keeps_the_images(trained, tmp_path, capsys):
    root, run = trained
    mine = tmp_path / "my_images"
    shutil.copytree(root / "widget" / "test" / "crack", mine)
    (mine / "scores.csv").write_text("my own table\n")
    before = _digest(mine)
    assert main(["predict", str(run), str(mine), "--out", str(mine)]) == 2
    assert "did not write" in capsys.readouterr().err and _digest(mine) == before


def test_predict_out_dot_refuses_a_full_working_directory(trained, tmp_path, monkeypatch, capsys):
    root, run = trained
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "scores.csv").write_text("mine too")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", "."]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "scores.csv").read_text() == "mine too"
    assert "Errno" not in capsys.readouterr().err


def test_predict_out_dot_fills_an_empty_working_directory(trained, tmp_path, monkeypatch):
    root, run = trained
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", "."]) == 0
    assert (tmp_path / "scores.csv").is_file() and list(tmp_path.glob("*_overlay.png"))


def test_a_second_predict_replaces_only_the_first_ones_files(trained, tmp_path):
    root, run = trained
    out = tmp_path / "pred"
    crack, scratch = root / "widget" / "test" / "crack", root / "widget" / "test" / "scratch"
    assert main(["predict", str(run), str(crack), "--out", str(out)]) == 0
    assert main(["predict", str(run), str(scratch), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert {Path(r["image"]).parent.name for r in rows} == {"scratch"}
    assert sorted(p.name for p in out.glob("*_overlay.png")) == sorted(r["overlay"] for r in rows)
    (out / "notes.txt").write_text("added by hand")  # now it holds something predict did not write
    assert main(["predict", str(run), str(crack), "--out", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "added by hand"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]  # no staging folder left


def test_predict_gives_every_input_its_own_overlay(trained, tmp_path):
    root, run = trained
    src = sorted((root / "widget" / "test" / "crack").glob("*.png"))[0]
    for sub, name in (("a", "dup.png"), ("c", "dup.png"), ("c", "dup_1.png")):
        (tmp_path / sub).mkdir(exist_ok=True)
        shutil.copy(src, tmp_path / sub / name)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out)]) == 0
    names = [r["overlay"] for r in csv.DictReader((out / "scores.csv").open())]
    assert len(set(names)) == 3 and len(list(out.glob("*_overlay.png"))) == 3


def test_prediction_folders_follow_the_umask(trained, tmp_path):
    root, run = trained
    old = os.umask(0o022)
    try:
        assert main(["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", str(tmp_path / "p")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o755


# ---- cases 2, 11: --overwrite touches only qarad's own files ------------------------------------
def test_fit_overwrite_keeps_the_users_files(tmp_path):
    root = make_mvtec_tree(tmp_path / "mvtec", n_train=4)
    out = tmp_path / "model"
    args = ["fit", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64", "--window", "32",
            "--corpus-size", "8", "--tokenizer-steps", "2", "--prior-steps", "2", "--qaw-steps", "2"]
    assert main(args) == 0
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "keep.txt").write_text("keep")
    assert main([*args[:-2], "--qaw-steps", "3", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine" / "keep.txt").read_text() == "keep"
    assert json.loads((out / "aras.json").read_text())["fit"]["qaw_steps"] == 3


def test_train_overwrite_drops_the_old_models_outputs(trained, tmp_path):
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "notes.txt").write_text("mine")
    assert (copy / "metrics.json").is_file()
    args = ["train", "--data", str(root), "--category", "widget", "--out", str(copy), "--size", "96", "--overwrite"]
    assert main(args) == 0
    assert not (copy / "metrics.json").exists() and not (copy / "report.html").exists()
    assert json.loads((copy / "model.json").read_text())["policy"]["size"] == 96
    assert (copy / "notes.txt").read_text() == "mine"


def test_an_interrupted_train_overwrite_leaves_no_old_model_under_the_new_config(trained, tmp_path, monkeypatch,
                                                                                  capsys):
    from qarad import api

    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_train_patchcore", killed)
    args = ["train", "--data", str(root), "--category", "widget", "--out", str(copy), "--size", "96"]
    assert main([*args, "--overwrite"]) == 130
    assert json.loads((copy / "config.json").read_text())["policy"]["size"] == 96
    assert not (copy / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(["eval", str(copy)]) == 2 and "no trained model yet" in capsys.readouterr().err
    assert main(args) == 0  # the same command resumes: it trains the new run


def test_train_overwrite_never_writes_into_a_folder_that_is_not_a_run(trained, tmp_path):
    root, _ = trained
    (tmp_path / "photo.png").write_bytes(b"not really")
    assert main(["train", "--data", str(root), "--category", "widget", "--out", str(tmp_path), "--size", "64",
                 "--overwrite"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


# ---- case 3: demo ------------------------------------------------------------------------------
def test_demo_refuses_a_users_folder(tmp_path, capsys):
    (tmp_path / "report.html").write_text("<p>my report</p>")
    (tmp_path / "summary.json").write_text("{}")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "report.html").read_text() == "<p>my report</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]
    assert "not a qarad demo folder" in capsys.readouterr().err


# ---- case 4: merge -----------------------------------------------------------------------------
def _shard(synth_setup, name: str) -> Path:
    base, model, images = synth_setup
    out = base / name
    if not out.exists():
        assert _synth(model, images, out, 2, "--shard", "0/2") == 0
    copy = base / f"{name}-copy-{len(list(base.iterdir()))}"
    shutil.copytree(out, copy)
    return copy


def test_merge_refuses_a_manifest_naming_a_file_outside_its_folder(synth_setup, tmp_path, capsys):
    shard = _shard(synth_setup, "shard0")
    (shard.parent / "decoy.png").write_bytes(b"what the manifest points at")
    decoy = tmp_path / "decoy.png"  # beside --out: a merge that follows ../ would overwrite it
    decoy.write_bytes(b"decoy")
    manifest = shard / "manifest.shard-0-of-2.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    entries[0]["image"] = "../decoy.png"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    out = tmp_path / "merged"
    assert main(["merge", str(shard), "--out", str(out)]) == 2
    assert "../decoy.png" in capsys.readouterr().err and decoy.read_bytes() == b"decoy"
    assert not out.exists()  # refused before --out is made: no empty marked folder left behind


def test_a_refused_merge_makes_no_folder(synth_setup, tmp_path, capsys):
    not_synth = tmp_path / "mine"
    not_synth.mkdir()
    (not_synth / "notes.txt").write_text("the user's")
    out = tmp_path / "merged"
    assert main(["merge", str(not_synth), "--out", str(out)]) == 2
    assert "not a qarad synth output" in capsys.readouterr().err and not out.exists()


def test_merge_does_not_copy_a_linked_image(synth_setup, tmp_path, capsys):
    shard = _shard(synth_setup, "shard0")
    secret = tmp_path / "secret.txt"
    secret.write_text("system file")
    (shard / "images" / "000000.png").unlink()
    (shard / "images" / "000000.png").symlink_to(secret)
    assert main(["merge", str(shard), "--out", str(tmp_path / "merged")]) == 2
    assert "link" in capsys.readouterr().err
    assert not (tmp_path / "merged" / "images" / "000000.png").exists()


# ---- case 5: VisA csv paths --------------------------------------------------------------------
def _visa_with(tmp_path: Path, column: str, value: str) -> Path:
    root = make_visa_tree(tmp_path / "visa")
    path = root / "split_csv" / "1cls.csv"
    rows = list(csv.DictReader(path.open()))
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_a_visa_object_that_is_a_path_is_refused(tmp_path, capsys):
    root = _visa_with(tmp_path, "object", "../../x")
    out = tmp_path / "bench" / "deep"
    assert main(["benchmark", "--data", str(root), "--method", "patchcore", "--out", str(out), "--size", "64"]) == 2
    assert "not a plain name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (out.parent.parent / "x").exists()


def test_a_visa_image_path_leaving_the_root_is_refused(tmp_path, capsys):
    root = _visa_with(tmp_path, "image", "../outside.png")
    assert main(["train", "--data", str(root), "--category", "candle", "--out", str(tmp_path / "r"),
                 "--size", "64"]) == 2
    assert "leaves the dataset root" in capsys.readouterr().err
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(root), "--method", "patchcore", "--out", str(out), "--size", "64"]) == 2
    assert "leaves the dataset root" in capsys.readouterr().err
    assert not out.exists()  # the split file is read before --out is made


# ---- case 6: a second writer is refused --------------------------------------------------------
def test_score_while_synth_writes_is_refused(synth_setup, capsys):
    base, model, images = synth_setup
    out = base / "busy"
    assert _synth(model, images, out) == 0
    before = (out / "manifest.jsonl").read_bytes()
    with owned.writing(out, "a test holding the lock"):
        assert main(["score", str(out)]) == 2
        assert "another qarad process is writing it" in capsys.readouterr().err
        assert _synth(model, images, out, 3) == 2  # a second synth into the same folder too
    assert (out / "manifest.jsonl").read_bytes() == before


def test_train_into_a_run_being_trained_is_refused(trained, tmp_path, capsys):
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = _digest(copy)
    with owned.writing(copy, "a test holding the lock"):
        assert main(["train", "--data", str(root), "--category", "widget", "--out", str(copy), "--size", "96",
                     "--overwrite"]) == 2
        assert main(["eval", str(copy)]) == 2
    assert "another qarad process" in capsys.readouterr().err and _digest(copy) == before


# ---- cases 13, 14: synth folders ---------------------------------------------------------------
def test_a_manifest_source_names_the_image_from_anywhere(synth_setup, tmp_path, monkeypatch):
    base, model, images = synth_setup
    monkeypatch.chdir(base)
    assert _synth(model, Path("images"), tmp_path / "rel") == 0
    sources = [json.loads(line)["source"] for line in (tmp_path / "rel" / "manifest.jsonl").read_text().splitlines()]
    assert all(Path(s).is_absolute() and Path(s).is_file() for s in sources)


def test_score_and_train_refuse_an_unfinished_synth_folder(synth_setup, mvtec_root, tmp_path, capsys):
    base, model, images = synth_setup
    out = tmp_path / "half"
    assert _synth(model, images, out, 3) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text(lines[0] + "\n")  # as if killed after the first sample
    assert main(["score", str(out)]) == 2
    assert "unfinished synth folder (1 of 3" in capsys.readouterr().err
    assert main(["train", "--method", "qarad", "--data", str(mvtec_root), "--category", "widget", "--synth", str(out),
                 "--out", str(tmp_path / "r"), "--size", "64", "--steps", "2"]) == 2
    assert "unfinished synth folder" in capsys.readouterr().err


def test_a_synth_worker_stops_when_its_parent_is_gone(synth_setup, tmp_path, monkeypatch):
    base, model, images = synth_setup
    monkeypatch.setenv("QARAD_PARENT_PID", str(os.getppid() + 10_000_000))  # no process has that pid
    with pytest.raises(SystemExit, match="parent process"):
        _synth(model, images, tmp_path / "orphan", 2, "--shard", "0/1")


# ---- case 14: metrics.json names the policy the model used -------------------------------------
def test_metrics_report_the_models_policy(trained, tmp_path):
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["policy"]["size"] = 128  # hand-edited: model.json's policy is what scores
    (copy / "config.json").write_text(json.dumps(config))
    model = json.loads((copy / "model.json").read_text())
    assert main(["eval", str(copy)]) == 0
    assert json.loads((copy / "metrics.json").read_text())["policy"] == model["policy"]


def test_eval_writes_its_three_outputs_all_or_nothing(trained, tmp_path, capsys, monkeypatch):
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["eval", str(copy)]) == 0
    before = {name: (copy / name).read_bytes() for name in ("metrics.json", "scores.csv", "report.html")}
    (copy / "report.html").unlink()
    (copy / "report.html").mkdir()  # the user's folder where the report goes
    (copy / "report.html" / "keep.txt").write_text("the user's")
    assert main(["eval", str(copy)]) == 2
    assert "report.html" in capsys.readouterr().err
    assert (copy / "report.html" / "keep.txt").read_text() == "the user's"
    assert (copy / "metrics.json").read_bytes() == before["metrics.json"]  # the earlier evaluation, untouched
    shutil.rmtree(copy / "report.html")
    from qarad.report import pages

    def broken(*args, **kwargs):
        raise RuntimeError("the report failed")

    monkeypatch.setattr(pages, "run_report", broken)  # fails after metrics.json and scores.csv are written
    with pytest.raises(RuntimeError):
        main(["eval", str(copy)])
    assert (copy / "metrics.json").read_bytes() == before["metrics.json"]
    assert (copy / "scores.csv").read_bytes() == before["scores.csv"]
    assert not (copy / "report.html").exists() and not list(copy.glob(".*.tmp")) and not list(copy.glob(".metrics*"))
