"""The Python API (qarad.api, `import qarad`): the README's example runs, and the module layout holds."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qarad
from qarad.testing import make_mvtec_tree

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    make_mvtec_tree(tmp_path / "data", size=(64, 64), n_train=4)
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_blocks()[0], "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out
    assert "crack" in printed
    assert (tmp_path / "runs" / "patchcore" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "qarad" / "predictions" / "scores.csv").is_file()
    assert (tmp_path / "runs" / "qarad" / "model.onnx").is_file()
    assert (tmp_path / "runs" / "qarad" / "model.onnx.json").is_file()


def test_readme_synthesis_example_calls_the_api_as_it_is(monkeypatch):
    """The synthesis block needs a fitted model, so it runs against stand-ins that only check each
    call binds to the real function's signature."""
    calls = []

    def stand_in(name):
        real = getattr(qarad, name)

        def call(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)
            calls.append(name)
            return type("Result", (), {"model": Path("models/widget"), "run": Path("runs/aras")})()
        return call

    fake = type(sys)("qarad_stand_in")
    for name in ("fit", "synth", "score", "train", "fit_config", "SegmenterConfig", "QaradTraining"):
        setattr(fake, name, stand_in(name) if name in ("fit", "synth", "score", "train") else getattr(qarad, name))
    exec(compile(_readme_blocks()[1], "README.md (Python API, synthesis)", "exec"),
         {"qarad": fake, "policy": qarad.ResolutionPolicy()})
    assert calls == ["fit", "synth", "score", "train"]


def test_import_qarad_and_help_do_not_import_torch():
    code = ("import sys, qarad, qarad.cli\n"
            "assert callable(qarad.__getattr__) and 'torch' not in sys.modules\n"
            "try:\n    qarad.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'qarad --help imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_top_level_names():
    from qarad import api
    from qarad.detection.patchcore import PatchCore
    from qarad.detection.segmenter import Segmenter

    for verb in ("fit", "synth", "score", "train", "evaluate", "predict", "export"):
        assert getattr(qarad, verb) is getattr(api, verb)
    assert qarad.eval is api.evaluate
    assert qarad.PatchCore is PatchCore and qarad.Segmenter is Segmenter
    with pytest.raises(AttributeError):
        qarad.no_such_name


def _train_defaults() -> dict:
    from qarad.cli import main_parser

    subs = next(a for a in main_parser()._actions if a.dest == "verb")
    return {a.dest: a.default for a in subs.choices["train"]._actions}


def test_train_cli_defaults_are_the_config_defaults():
    from qarad.detection.patchcore import PatchCoreConfig
    from qarad.detection.segmenter import SegmenterConfig

    cli, pc, seg, training = _train_defaults(), PatchCoreConfig(), SegmenterConfig(), qarad.QaradTraining()
    for name in ("coreset_ratio", "memory_limit", "batch_size", "seed", "search"):
        assert cli[name] == getattr(pc, name), name
    for name in ("seed", "search", "coreset_ratio", "memory_limit"):
        assert cli[name] == getattr(seg, name), name
    assert cli["batch_size"] == training.batch_size
    # the qarad method's own flags default to None: it takes its configs' defaults, patchcore refuses them
    for name in ("steps", "negatives", "residual", "fusion", "synth", "weighting", "max_normal_views",
                 "perlin_samples", "real_weight"):
        assert cli[name] is None, name


def test_run_config_detector_part_keeps_its_keys():
    """config.json's "detector" part as every earlier version wrote it (runs folders stay comparable)."""
    from qarad import runs
    from qarad.detection.patchcore import PatchCoreConfig
    from qarad.detection.segmenter import SegmenterConfig

    from qarad.validation_config import ValidationConfig

    split = ValidationConfig()  # val_share and (PatchCore) synth: since the validation split (runs: the schema defaults)
    assert runs.detector_settings("patchcore", PatchCoreConfig(memory_limit=7), split, qarad.QaradTraining()) == {
        "coreset_ratio": 0.1, "memory_limit": 7, "batch_size": 8, "seed": 0, "search": "ivf",
        "backbone": "efficientnet-lite0", "val_share": 0.15, "synth": None}
    stored = qarad.QaradTraining(synth="/s", batch_size=4)
    assert runs.detector_settings("qarad", stored, SegmenterConfig(steps=30, seed=2), split) == {
        "steps": 30, "synth": "/s", "weighting": "linear", "max_normal_views": 4000, "batch_size": 4, "seed": 2,
        "negatives": ["synthetic", "perlin"], "residual": True, "fusion": True, "perlin_samples": 200,
        "search": "ivf", "backbone": "efficientnet-lite0", "real_weight": 1.0,  # runs before it: the schema default
        "coreset_ratio": 0.1, "memory_limit": None, "val_share": 0.15}  # ... and before these were recorded
