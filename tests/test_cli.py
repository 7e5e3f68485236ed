import csv
import json
import os

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
    for method in ("patchcore", "qarad"):  # ours and the baseline, as written in each run's metrics.json
        metrics = json.loads((out / "brick" / method / "metrics.json").read_text())
        assert f"{metrics['overall']['aupro']:.3f}" in html
        assert len(metrics["curves"]["pixel_roc"]) == 101
    assert "<img src='data:image/png;base64," in html and html.count("<svg") == 3
    scores = [json.loads(line)["score"] for line in (out / "brick" / "synth" / "manifest.jsonl").read_text().splitlines()]
    assert f"best QAW {max(scores):.2f}" in html and f"worst QAW {min(scores):.2f}" in html
    assert json.loads((out / "summary.json").read_text())["brick"]["synth_per_s"] > 0
    assert main(["demo", "--quick", "--out", str(out)]) == 0  # a second run reuses every finished stage


@pytest.mark.parametrize("verb", ["train", "predict", "demo"])
def test_out_below_a_regular_file_names_the_file(trained, tmp_path, capsys, verb):
    root, run = trained
    (tmp_path / "file.txt").write_text("a regular file\n")
    out = tmp_path / "file.txt" / "run"
    argv = {"train": ["train", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64"],
            "predict": ["predict", str(run), str(root / "widget" / "test" / "crack"), "--out", str(out)],
            "demo": ["demo", "--quick", "--out", str(out)]}[verb]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot create output folder {out}: {tmp_path / 'file.txt'} is a file, not a folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_unwritable_output_folders_are_refused_before_any_work(trained, tmp_path, monkeypatch, capsys):
    from test_data_io import pretend_root_obeys_mode_bits

    root, run = trained
    locked = tmp_path / "locked"
    (locked / "run").mkdir(parents=True)
    for name in ("config.json", "model.json", "model.safetensors"):
        (locked / "run" / name).write_bytes((run / name).read_bytes())
    os.chmod(locked / "run", 0o500)
    os.chmod(locked, 0o500)
    pretend_root_obeys_mode_bits(monkeypatch)
    try:
        assert main(["train", "--data", str(root), "--category", "widget", "--out", str(locked / "new")]) == 2
        assert f"cannot create output folder {locked / 'new'}: no permission to write in {locked}" in \
            capsys.readouterr().err
        assert main(["eval", str(locked / "run")]) == 2  # metrics.json would go into the run folder
        assert f"no permission to write in {locked / 'run'}" in capsys.readouterr().err
        assert sorted(p.name for p in locked.rglob("*")) == ["config.json", "model.json", "model.safetensors", "run"]
    finally:
        os.chmod(locked / "run", 0o700)
        os.chmod(locked, 0o700)


@pytest.mark.parametrize("part, key", [(None, "bogus_key"), ("data", "bogus_key"), ("policy", "bogus_key"),
                                       ("detector", "coreset_ration")])
def test_run_config_with_an_unknown_key_is_refused(trained, tmp_path, capsys, part, key):
    _, run = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "model.json", "model.safetensors"):
        (copy / name).write_bytes((run / name).read_bytes())
    cfg = json.loads((copy / "config.json").read_text())
    (cfg if part is None else cfg[part])[key] = 1
    (copy / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err
    assert str(copy / "config.json") in err and f"['{key}']" in err and "unknown" in err
    assert not (copy / "metrics.json").exists()


def _defaults(command: str) -> dict:
    from qarad.cli import main_parser

    subs = next(a for a in main_parser()._actions if a.dest == "verb")
    return {a.dest: a.default for a in subs.choices[command]._actions}


def test_fit_and_synth_cli_defaults_are_the_config_defaults():
    """The CLI spells its defaults out (no torch import for --help); they must not drift from the configs."""
    from qarad.cli import main_parser
    from qarad.synthesis.aras import SamplerConfig
    from qarad.synthesis.model import FitConfig

    fit, synth, f, s = _defaults("fit"), _defaults("synth"), FitConfig(), SamplerConfig()
    for name in ("batch_size", "seed"):
        assert fit[name] == getattr(f, name), name
    # the flags a continued fit (--init) takes from its model default to None (FitConfig's); their help
    # still names FitConfig's value
    subs = next(a for a in main_parser()._actions if a.dest == "verb")
    helps = {a.dest: a.help for a in subs.choices["fit"]._actions}
    for name in ("window", "max_zoom", "corpus_size", "tokenizer_steps", "prior_steps", "refiner_steps", "qaw_steps",
                 "real_samples_per_shot", "real_share"):
        assert fit[name] is None and f"{getattr(f, name):g}" in helps[name], name
    for name in ("cfg_scale", "temperature", "top_k", "top_p", "strength", "composite"):
        assert synth[name] == getattr(s, name), name
    assert fit["tokenizer_ema"] is None and "default 0 = off" in helps["tokenizer_ema"]


def test_fit_tokenizer_ema_sets_the_tokenizer_config(tmp_path, monkeypatch, capsys):
    from qarad import api

    seen = []
    monkeypatch.setattr(api, "fit", lambda data, category, out, config, *a, **k: seen.append(config)
                        or api.Fitted(out, 0.0))
    args = ["fit", "--data", str(tmp_path), "--category", "widget", "--out", str(tmp_path / "model")]
    assert main(args) == 0 and main([*args, "--tokenizer-ema", "0.99"]) == 0
    assert [c.tokenizer.ema_decay for c in seen] == [0.0, 0.99]
    assert seen[0] == api.fit_config()  # off by default
    assert main([*args, "--tokenizer-ema", "1"]) == 2
    assert "--tokenizer-ema: the value must be a finite number in [0, 1)" in capsys.readouterr().err  # names the flag
    from qarad.commands.synth import MODEL_FLAGS

    assert "tokenizer_ema" in MODEL_FLAGS  # a continued fit (--init) keeps its model's tokenizer
