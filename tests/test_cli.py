import csv
import json

import pytest

from conftest import make_mvtec_tree
from qarad.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    root = make_mvtec_tree(base / "data", size=(64, 64), n_train=4)
    run = base / "run"
    assert main(["train", "--data", str(root), "--category", "widget", "--out", str(run), "--size", "64"]) == 0
    return root, run


def test_train_eval_predict_end_to_end(trained, capsys):
    root, run = trained
    assert main(["eval", str(run)]) == 0
    table = capsys.readouterr().out
    assert "crack" in table and "scratch" in table and "ALL" in table
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"crack", "scratch"}
    assert metrics["overall"]["n_images"] == 6 and metrics["policy"]["size"] == 64
    assert 0.0 <= metrics["overall"]["aupro"] <= 1.0
    assert metrics["overall"]["image_auroc"] > 0.6  # bright squares on grey noise are easy
    out = run / "pred"
    assert main(["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 2 and all((out / r["overlay"]).is_file() for r in rows)
    assert {"score", "threshold", "anomalous"} <= set(rows[0])


def test_retrain_same_run_is_a_no_op_and_different_run_is_refused(trained, capsys):
    root, run = trained
    assert main(["train", "--data", str(root), "--category", "widget", "--out", str(run), "--size", "64"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert main(["train", "--data", str(root), "--category", "widget", "--out", str(run), "--size", "96"]) == 2
    assert "holds a different run" in capsys.readouterr().err


def test_predict_on_a_bad_image_names_it_and_writes_nothing(trained, tmp_path, capsys):
    _, run = trained
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable image" in err
    assert not out.exists() and not list(tmp_path.glob(".pred.partial-*"))


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a qarad run folder" in capsys.readouterr().err


def test_missing_train_good_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "cat" / "train").mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path), "--category", "cat", "--out", str(tmp_path / "r")]) == 2
    assert "train/good" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_quick_demo_writes_a_report_whose_numbers_match_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    html = (out / "report.html").read_text()
    metrics = json.loads((out / "brick" / "patchcore" / "metrics.json").read_text())
    assert f"{metrics['overall']['image_auroc']:.3f}" in html and "<img src='data:image/png;base64," in html
