"""Config dataclass fields as command-line flags, so each setting is defined once: the field gives
the flag's name, type, default and help, the parser is built from it, and a config turns back
into the argv of a worker process without a hand-kept list that could drop a flag.

Torch-free, so that `qarad --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing

FLAG = "flag"  # dataclasses.field metadata key
# largest --size: a 4096-px view already makes 262k stride-8 patches (about 160 MB of features);
# 100000 px asked torch for 120 GB before failing
MAX_WORKING_SIZE = 4096


def flag(default, help: str | None = None, choices: tuple[str, ...] | None = None, parse=None):
    """A config field that is also the flag --NAME (underscores as dashes). A bool must default
    to True and becomes the switch --no-NAME. `parse` turns the flag's text into the value (default:
    the field's type; a float must be finite)."""
    return dataclasses.field(default=default, metadata={FLAG: {"help": help, "choices": choices, "parse": parse}})


# Value checks, shared by the configs' __post_init__ (Python callers) and the flags' parsers (argparse
# types below), so a bad value is refused in one line before any work, whichever door it came in by.
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_int(name: str, value, low: int = 1, optional: bool = False) -> None:
    """`value` is a whole number >= `low` (or None when `optional`), else ValueError naming `name`."""
    if optional and value is None:
        return
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")


def check_float(name: str, value, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """`value` is a finite number in [low, high] (open at either end when `low_open` / `high_open`),
    else ValueError."""
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        else:
            bounds = "" if high is None else f" <= {high:g}"
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")


def _parser(convert, check):
    """An argparse type: `convert` the text, then `check` the value (one line on refusal)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            kind = "whole number" if convert is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {kind}, got {text!r}") from None
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse


def int_at_least(low: int):
    """argparse type: a whole number >= `low`."""
    return _parser(int, lambda v: check_int("the value", v, low))


positive_int = int_at_least(1)  # --batch-size, --max-train-images, --corpus-size, ...
non_negative_int = int_at_least(0)  # step counts (0 = that stage does nothing)
finite_float = _parser(float, lambda v: check_float("the value", v))  # nan and inf refused
positive_float = _parser(float, lambda v: check_float("the value", v, 0.0, low_open=True))  # --budget-min
share = _parser(float, lambda v: check_float("the value", v, 0.0, 1.0, low_open=True))  # --coreset-ratio: (0, 1]
fraction = _parser(float, lambda v: check_float("the value", v, 0.0, 1.0, high_open=True))  # --real-share, a decay
non_negative_float = _parser(float, lambda v: check_float("the value", v, 0.0))  # a loss weight
at_least_one = _parser(float, lambda v: check_float("the value", v, 1.0))  # --max-zoom


def working_size(text: str) -> int:
    """argparse type of --size: a whole number of px in [32, MAX_WORKING_SIZE] (ResolutionPolicy
    checks that it is a multiple of the backbone stride)."""
    value = int_at_least(32)(text)
    if value > MAX_WORKING_SIZE:
        raise argparse.ArgumentTypeError(f"the working size must be at most {MAX_WORKING_SIZE} px (tile larger "
                                         f"images with --policy tile), got {value}")
    return value


def device(text: str) -> str:
    """argparse type of --device: cpu, cuda, cuda:N or auto, and cuda only where torch has it."""
    if text == "cpu":  # the default: no torch import while parsing
        return text
    from .distributed import resolve_device  # imports torch

    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _base(kind):
    """`int | None` -> int; `tuple[str, ...]` -> tuple; other types as they are."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is tuple:
        return tuple
    return args[0] if len(args) == 1 and type(None) in typing.get_args(kind) else kind


def _flags(cls) -> list[tuple[dataclasses.Field, type]]:
    # the flag fields' annotations only: another field's may name a type its module imports for type checking
    scope = vars(sys.modules[cls.__module__])
    return [(f, _base(eval(f.type, scope) if isinstance(f.type, str) else f.type))  # noqa: S307 (our annotations)
            for f in dataclasses.fields(cls) if FLAG in f.metadata]


def flag_names(cls) -> tuple[str, ...]:
    """The fields of `cls` that are flags."""
    return tuple(f.name for f, _ in _flags(cls))


def _option(f: dataclasses.Field, kind: type) -> str:
    return ("--no-" if kind is bool else "--") + f.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, unset: bool = False) -> None:
    """One argument per flag field of the dataclass `cls`, in field order. `unset`: every default is
    None, so that `given` tells the flags a user typed from the ones left to the config's defaults
    (a method refuses flags that are not its settings rather than ignore them)."""
    for f, kind in _flags(cls):
        meta = f.metadata[FLAG]
        if kind is bool:
            if f.default is not True:
                raise TypeError(f"{cls.__name__}.{f.name}: a bool flag must default to True (it becomes --no-...)")
            parser.add_argument(_option(f, kind), dest=f.name, action="store_false", help=meta["help"],
                                **({"default": None} if unset else {}))
            continue
        extra = {"choices": list(meta["choices"])} if meta["choices"] else {}
        if kind is tuple:
            extra["nargs"] = "+"
        parse = meta.get("parse") or (finite_float if kind is float else str if kind is tuple else kind)
        parser.add_argument(_option(f, kind), dest=f.name, type=parse, default=None if unset else f.default,
                            help=meta["help"], **extra)


def _value(kind: type, value):
    return tuple(value) if kind is tuple and value is not None else value


def given(cls, args: argparse.Namespace) -> dict:
    """The flag fields of `cls` that the parsed flags set (not None), by field name: what `add_flags(...,
    unset=True)` saw typed."""
    return {f.name: _value(kind, getattr(args, f.name)) for f, kind in _flags(cls)
            if getattr(args, f.name) is not None}


def from_args(cls, args: argparse.Namespace):
    """The config that the parsed flags describe (fields without a flag keep their defaults)."""
    return cls(**{f.name: _value(kind, getattr(args, f.name)) for f, kind in _flags(cls)})


def to_argv(config) -> list[str]:
    """The flags that parse back into `config` (its flag fields; the others are not on the command line)."""
    argv = []
    for f, kind in _flags(type(config)):
        value = getattr(config, f.name)
        if kind is bool:
            argv += [] if value else [_option(f, kind)]
        elif kind is tuple:
            argv += [_option(f, kind), *map(str, value)]
        elif value is not None:
            argv += [_option(f, kind), str(value)]
    return argv


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    """--policy --size --scale --overlap: a ResolutionPolicy (read back with `policy_from_args`)."""
    g = parser.add_argument_group("resolution policy (stored with the run; eval/predict reuse it)")
    g.add_argument("--policy", choices=["resize", "keep-aspect", "tile"], default="resize",
                   help="resize: squash to SIZE x SIZE; keep-aspect: shorter side to SIZE, padded; "
                        "tile: SIZE tiles at SCALE (1.0 = native pixels). Default: resize")
    g.add_argument("--size", type=working_size, default=256,
                   help=f"working size in px, a multiple of 32 up to {MAX_WORKING_SIZE} (default 256)")
    g.add_argument("--scale", type=finite_float, default=1.0,
                   help="tile policy: image scale before tiling (default 1.0)")
    g.add_argument("--overlap", type=non_negative_int, default=64,
                   help="tile policy: minimum tile overlap in px (default 64)")


def policy_from_args(args: argparse.Namespace):
    """The ResolutionPolicy that `add_policy_flags`' flags describe."""
    from .data.resolution import ResolutionPolicy  # imports torch: only once a verb runs

    return ResolutionPolicy(mode=args.policy, size=args.size, scale=args.scale, overlap=args.overlap)


LAYOUT_CHOICES = ("auto", "mvtec", "visa", "btad", "folder")  # "auto" + data.layouts.LAYOUTS (torch-free here)


def add_dataset_flags(parser: argparse.ArgumentParser, run_default: bool = False) -> None:
    """--layout and the folder layout's --normal-dir ... (read back with `folder_from_args`).
    `run_default`: for a verb that reads a trained run: only --layout, whose default is the run's
    (a folder-layout run keeps its folders)."""
    g = parser.add_argument_group("dataset layout (data/layouts.py)")
    layouts = "mvtec (CAT/train/good), visa (split_csv/1cls.csv), btad (NN/train/ok), folder (--normal-dir ...)"
    if run_default:
        g.add_argument("--layout", choices=LAYOUT_CHOICES, default=None,
                       help=f"{layouts}; auto: what the root holds. Default: the run's")
        return
    g.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                   help=f"{layouts}; auto (default): folder when --normal-dir is given, else what the root holds")
    g.add_argument("--normal-dir", help="folder layout: normal images (relative to --data, or absolute)")
    g.add_argument("--abnormal-dir", help="folder layout: defective test images")
    g.add_argument("--mask-dir", help="folder layout: masks of the defective images, <stem>.png or <stem>_mask.png")
    g.add_argument("--normal-test-dir",
                   help="folder layout: normal test images; without it a seeded share of --normal-dir is held "
                        "out for test (never trained on)")
    g.add_argument("--test-split-ratio", type=finite_float, default=0.2,
                   help="folder layout: share of --normal-dir held out for test without --normal-test-dir "
                        "(default 0.2)")
    g.add_argument("--split-seed", type=int, default=0,
                   help="folder layout: seed of that held-out share (default 0; part of the dataset, not of "
                        "the run, so fit, train and benchmark hold out the same images)")


def folder_from_args(args: argparse.Namespace):
    """The FolderSplit that `add_dataset_flags`' folder flags describe, or None without --normal-dir."""
    from .data.layouts import FolderSplit

    folder_flags = ("abnormal_dir", "mask_dir", "normal_test_dir")
    if args.normal_dir is None:
        given = [f"--{name.replace('_', '-')}" for name in folder_flags if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --normal-dir (the folder layout)")
        return None
    return FolderSplit(args.normal_dir, args.abnormal_dir, args.mask_dir, args.normal_test_dir,
                       args.test_split_ratio, args.split_seed)

