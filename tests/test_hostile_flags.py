"""Issue 32, items 8-10: hostile flags are refused where they are parsed (one line, exit 2, before
any folder is made), the configs refuse the same values from Python, and every flag either reaches
the method it configures or is refused (none is dropped)."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from qarad import api, runs
from qarad.cli import main, main_parser
from qarad.commands.detect import detector_configs
from qarad.detector_config import QaradTraining
from qarad.flags import flag_names
from qarad.detection.patchcore import PatchCoreConfig
from qarad.detection.segmenter import SegmenterConfig
from qarad.synthesis.model import FitConfig
from qarad.synthesis.sampler_config import SamplerConfig
from qarad.testing import make_mvtec_tree

# every verb's required arguments (none of them need to exist: the flag is refused first)
REQUIRED = {
    "train": ["--data", "d", "--category", "c", "--out", "o"],
    "benchmark": ["--data", "d", "--out", "o"],
    "eval": ["run"],
    "predict": ["run", "images"],
    "fit": ["--data", "d", "--category", "c", "--out", "o"],
    "synth": ["model", "--images", "i", "--prompts", "p", "--out", "o"],
    "copy-paste": ["--real-defects", "r", "--images", "i", "--out", "o"],
}


def _verbs_with(option: str) -> list[str]:
    subs = next(a for a in main_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(verb for verb, p in subs.choices.items() if option in p._option_string_actions)


def _refused_at_parse(argv: list[str], capsys) -> str:
    """`argv` ends the parse with exit 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_every_verb_that_takes_a_batch_size_is_listed():
    assert _verbs_with("--batch-size") == sorted(["train", "benchmark", "eval", "predict", "fit"])
    assert _verbs_with("--device") == sorted(["train", "benchmark", "eval", "predict", "fit"])


@pytest.mark.parametrize("verb", ["train", "benchmark", "eval", "predict", "fit"])
@pytest.mark.parametrize("size", ["0", "-1", "-4", "x"])
def test_batch_size_below_one_is_refused_by_every_verb(verb, size, capsys, tmp_path):
    # today's code took it and looped for ever (train, eval, predict) or trained on nan (fit)
    argv = [verb, *REQUIRED[verb], "--batch-size", size]
    assert "--batch-size" in _refused_at_parse(argv, capsys)
    assert main(argv) == 2  # main() itself: the same single line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("make", [lambda: PatchCoreConfig(batch_size=0), lambda: PatchCoreConfig(batch_size=-1),
                                  lambda: SegmenterConfig(batch_size=0), lambda: FitConfig(batch_size=0),
                                  lambda: FitConfig(batch_size=-4), lambda: FitConfig(corpus_size=0),
                                  lambda: FitConfig(corpus_size=-1), lambda: FitConfig(tokenizer_steps=-1),
                                  lambda: PatchCoreConfig(batch_size=2.5), lambda: PatchCoreConfig(batch_size=True)])
def test_the_python_api_refuses_what_the_flags_refuse(make):
    with pytest.raises(ValueError, match="must be a whole number"):
        make()


@pytest.mark.parametrize("verb", ["train", "benchmark", "eval", "predict", "fit"])
@pytest.mark.parametrize("device", ["banana", "cuda", "cuda:0", "cpu:0"])
def test_an_unknown_or_absent_device_is_one_line(verb, device, capsys):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "--device" in _refused_at_parse([verb, *REQUIRED[verb], "--device", device], capsys)


def test_cpu_and_auto_devices_parse():
    for device in ("cpu", "auto"):
        assert main_parser().parse_args(["eval", "run", "--device", device]).device == device


@pytest.mark.parametrize("verb", ["train", "benchmark", "fit"])
@pytest.mark.parametrize("size", ["100000", "4128", "16", "0", "-256"])
def test_working_size_is_capped_and_floored(verb, size, capsys):
    # --size 100000 asked torch for 120 GB and ended in a traceback
    assert "--size" in _refused_at_parse([verb, *REQUIRED[verb], "--size", size], capsys)
    assert main_parser().parse_args([verb, *REQUIRED[verb], "--size", "4096"]).size == 4096


@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--cfg-scale", "nan"), ("--cfg-scale", "inf"),
                                        ("--cfg-scale", "-inf"), ("--top-p", "nan"), ("--strength", "nan"),
                                        ("--top-k", "-1")])
def test_synth_refuses_non_finite_sampler_values(flag, value, capsys):
    assert flag in _refused_at_parse(["synth", *REQUIRED["synth"], "--prompt-b", "b", flag, value], capsys)


@pytest.mark.parametrize("flag,value", [("--top-p", "0"), ("--top-p", "1.5"), ("--strength", "2"),
                                        ("--mix", "nan"), ("--mix", "inf")])
def test_synth_refuses_sampler_values_out_of_range_before_reading_the_model(flag, value, tmp_path, capsys):
    mix = ["--prompt-b", "b"] if flag == "--mix" else []
    assert main(["synth", str(tmp_path / "no-model"), "--images", "i", "--prompts", "p", "--out",
                 str(tmp_path / "out"), *mix, flag, value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["temperature", "cfg_scale", "top_p", "strength"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sampler_config_refuses_non_finite_values(field, value):
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
        SamplerConfig(**{field: value})


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-4"), ("--corpus-size", "0"),
                                        ("--corpus-size", "-1"), ("--max-train-images", "0"),
                                        ("--max-zoom", "nan"), ("--real-share", "inf"), ("--tokenizer-steps", "-1"),
                                        ("--window", "0"), ("--tokenizer-ema", "nan"), ("--tokenizer-ema", "1.5"),
                                        ("--max-zoom", "0.5"), ("--real-share", "2")])
def test_fit_refuses_bad_counts_before_any_folder_is_made(flag, value, tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    out = tmp_path / "model"
    argv = ["fit", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64", flag, value]
    assert flag in _refused_at_parse(argv, capsys)
    assert main(argv) == 2
    assert not out.exists()  # no partial model


@pytest.mark.parametrize("verb", ["train", "benchmark"])
@pytest.mark.parametrize("flag,value", [("--max-train-images", "0"), ("--max-train-images", "-2"),
                                        ("--memory-limit", "0"), ("--coreset-ratio", "nan"),
                                        ("--steps", "-1"), ("--perlin-samples", "0"), ("--max-normal-views", "0"),
                                        ("--real-weight", "inf"), ("--real-weight", "-1"), ("--coreset-ratio", "1.5"),
                                        ("--scale", "nan"), ("--overlap", "-1")])
def test_detector_counts_and_rates_are_refused_at_parse(verb, flag, value, capsys):
    assert flag in _refused_at_parse([verb, *REQUIRED[verb], "--method", "qarad", flag, value], capsys)


@pytest.mark.parametrize("verb", ["train", "benchmark", "fit"])
@pytest.mark.parametrize("given", [["--shots", "3"], ["--shot-seed", "1"], ["--shots", "2", "--shot-seed", "4"]])
def test_shot_flags_without_real_defects_are_refused_not_ignored(verb, given, tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    out = tmp_path / "out"
    argv = [verb, "--data", str(root), "--out", str(out), "--size", "64",
            *(["--categories"] if verb == "benchmark" else ["--category"]), "widget", *given]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert given[0] in err and "--real-defects" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, math.nan])
def test_bank_settings_are_checked_by_both_detector_configs(ratio):
    for config in (PatchCoreConfig, SegmenterConfig):
        with pytest.raises(ValueError, match="--coreset-ratio"):
            config(coreset_ratio=ratio)
        with pytest.raises(ValueError, match="--memory-limit"):
            config(memory_limit=0)


def test_coreset_ratio_out_of_range_is_one_line_before_any_folder(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    out = tmp_path / "run"
    argv = ["train", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64"]
    for method in (["--method", "patchcore"], ["--method", "qarad", "--negatives", "perlin"]):
        assert main([*argv, *method, "--coreset-ratio", "1.5"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--coreset-ratio" in err
    assert not out.exists()


# --- item 10: --coreset-ratio and --memory-limit reach the qarad detector and its run's config.json

def _configs(*flags: str):
    return detector_configs(main_parser().parse_args(["train", *REQUIRED["train"], *flags]))


def test_bank_flags_reach_the_qarad_detector():
    detector, _ = _configs("--method", "qarad", "--coreset-ratio", "0.25", "--memory-limit", "300")
    assert isinstance(detector, SegmenterConfig)
    assert (detector.coreset_ratio, detector.memory_limit) == (0.25, 300)


def test_qarad_defaults_are_the_configs_when_its_flags_are_not_given():
    detector, training = _configs("--method", "qarad")
    assert detector == SegmenterConfig()
    assert training == api.QaradTraining()
    detector, training = _configs("--method", "qarad", "--negatives", "perlin", "--no-fusion", "--steps", "7",
                                  "--weighting", "none", "--real-weight", "2", "--perlin-samples", "9")
    assert (detector.negatives, detector.fusion, detector.residual, detector.steps) == (("perlin",), False, True, 7)
    assert (training.weighting, training.real_weight, training.perlin_samples) == ("none", 2.0, 9)


def _run_config(root, detector) -> dict:
    training = api.QaradTraining(perlin_samples=4)
    return api.run_config(root, "widget", detector, training)[1]


def test_bank_settings_are_recorded_and_a_rerun_with_others_is_a_different_run(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    base = dict(negatives=("perlin",), steps=3)
    first = _run_config(root, SegmenterConfig(**base, coreset_ratio=0.25, memory_limit=300))
    assert (first["detector"]["coreset_ratio"], first["detector"]["memory_limit"]) == (0.25, 300)
    out = tmp_path / "run"
    assert runs.prepare(out, first) is False
    for name in ("model.safetensors", "model.json"):  # as a finished training leaves them
        (out / name).write_text("{}")
    assert runs.prepare(out, first) is True  # the same run: already trained
    for other in (SegmenterConfig(**base, coreset_ratio=0.5, memory_limit=300),
                  SegmenterConfig(**base, coreset_ratio=0.25, memory_limit=None)):
        with pytest.raises(runs.RunError, match="holds a different run"):
            runs.prepare(out, _run_config(root, other))


def test_a_qarad_run_written_before_the_bank_settings_were_recorded_still_holds(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    config = _run_config(root, SegmenterConfig(negatives=("perlin",), steps=3))  # the defaults older runs used
    old = json.loads(json.dumps(config))
    del old["detector"]["coreset_ratio"], old["detector"]["memory_limit"]
    out = tmp_path / "old"
    out.mkdir()
    (out / runs.CONFIG).write_text(json.dumps({"qarad_version": "0.0", **old}))
    assert runs.read_config(out)["detector"] == old["detector"]
    assert runs.holds(out, config)
    assert not runs.holds(out, _run_config(root, SegmenterConfig(negatives=("perlin",), steps=3, coreset_ratio=0.5)))


# --- item 10: PatchCore refuses the qarad method's flags instead of ignoring them

# (--synth is both methods': PatchCore runs validate on its samples)
QARAD_FLAGS = [["--weighting", "none"], ["--negatives", "perlin"],
               ["--perlin-samples", "5"], ["--no-residual"], ["--no-fusion"], ["--real-weight", "2"],
               ["--steps", "5"], ["--max-normal-views", "10"], ["--real-defects", "r"]]


def test_every_qarad_only_flag_is_checked():
    """The qarad-only flags are the flag fields of SegmenterConfig and QaradTraining (and --real-defects):
    a new field there is a new flag, and this list must name it."""
    options = {("--no-" if n in ("residual", "fusion") else "--") + n.replace("_", "-")
               for n in (*flag_names(SegmenterConfig), *flag_names(QaradTraining))}
    assert {g[0] for g in QARAD_FLAGS} == options | {"--real-defects"}


def test_detector_flags_are_generated_from_the_configs():
    """Every flag field of the detector configs is a `train` flag, and no flag given means the configs'
    own defaults (nothing the parser made up)."""
    text = main_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for cls in (PatchCoreConfig, SegmenterConfig, QaradTraining):
        for name in flag_names(cls):
            option = ("--no-" if name in ("residual", "fusion") else "--") + name.replace("_", "-")
            assert option in text, option
    assert _configs("--method", "patchcore")[0] == PatchCoreConfig()
    detector, training = _configs("--method", "qarad")
    assert detector == SegmenterConfig() and training == QaradTraining()
    detector, training = _configs("--method", "qarad", "--negatives", "perlin", "feature", "--no-fusion",
                                  "--coreset-ratio", "0.5", "--max-normal-views", "7", "--search", "exact")
    assert detector == SegmenterConfig(negatives=("perlin", "feature"), fusion=False, coreset_ratio=0.5,
                                       search="exact")
    assert training == QaradTraining(max_normal_views=7)


@pytest.mark.parametrize("given", QARAD_FLAGS, ids=lambda g: g[0])
def test_patchcore_refuses_each_qarad_flag(given):
    with pytest.raises(ValueError, match=f"{given[0]}: not a setting of PatchCore"):
        _configs("--method", "patchcore", *given)


def test_patchcore_with_qarad_flags_is_one_line_naming_them_and_makes_nothing(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    out = tmp_path / "run"
    argv = ["train", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64",
            "--weighting", "none", "--steps", "5", "--no-fusion"]
    with pytest.raises(ValueError):  # fails fast on code that ignored them (and would train)
        detector_configs(main_parser().parse_args(argv))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert all(flag in err for flag in ("--weighting", "--steps", "--no-fusion"))
    assert not out.exists()


def test_patchcore_without_qarad_flags_still_parses():
    detector, training = _configs("--method", "patchcore", "--coreset-ratio", "0.3", "--memory-limit", "40",
                                  "--batch-size", "3")
    assert detector == PatchCoreConfig(coreset_ratio=0.3, memory_limit=40, batch_size=3)
    assert training.batch_size == 3


def test_a_run_written_before_the_residual_detector_holds_the_run_with_its_settings(tmp_path):
    """config.json's one table of legacy defaults (runs.py's schema defaults) serves reading and comparing:
    a qarad run written before the residual detector, the search and the backbone settings is the run
    that sets them as it did (features-only head, exact search, Lite0), and no other."""
    from qarad.validation_config import ValidationConfig

    root = make_mvtec_tree(tmp_path / "data", n_train=2, size=(64, 64))
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "synth.json").write_text("{}")
    training, no_split = api.QaradTraining(synth=tmp_path / "synth"), ValidationConfig(val_share=0.0)

    def run_config(detector):
        return api.run_config(root, "widget", detector, training, validation=no_split)[1]

    then = SegmenterConfig(negatives=("synthetic",), residual=False, fusion=False, search="exact",
                           backbone="efficientnet-lite0", steps=3)
    config = run_config(then)
    old = json.loads(json.dumps(config))
    for key in ("negatives", "residual", "fusion", "perlin_samples", "search", "backbone", "real_weight",
                "coreset_ratio", "memory_limit", "val_share"):
        del old["detector"][key]
    out = tmp_path / "old"
    out.mkdir()
    (out / runs.CONFIG).write_text(json.dumps({"qarad_version": "0.0", **old}))
    assert runs.holds(out, config)
    assert not runs.holds(out, run_config(SegmenterConfig(negatives=("synthetic",), steps=3)))
