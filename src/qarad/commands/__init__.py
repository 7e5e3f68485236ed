"""The CLI verbs: each turns parsed flags into configs, calls one qarad.api function and prints the result."""
from .detect import benchmark, demo, eval, export, predict, train  # noqa: A004
from .synth import copy_paste, fit, merge, score, synth

__all__ = ["benchmark", "copy_paste", "demo", "eval", "export", "fit", "merge", "predict", "score", "synth", "train"]
