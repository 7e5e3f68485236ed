"""Bodies of the CLI verbs (cli.py only parses arguments)."""
from .detect import demo, eval, export, predict, train  # noqa: A004
from .synth import fit, score, synth

__all__ = ["demo", "eval", "export", "fit", "predict", "score", "synth", "train"]
