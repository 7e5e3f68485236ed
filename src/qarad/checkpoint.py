"""The one place that reads and writes weights: safetensors tensors + a JSON config beside them.

Nothing here unpickles: a pickle renamed to .safetensors fails the safetensors header check and
is reported as such. Configs are rebuilt through their dataclass, so unknown keys are refused, and
each value is checked against its field's type: a hand-edited file gets an error naming it and the
key, never a traceback. JSON is strict both ways (no NaN, no Infinity), and weights holding NaN or
infinity are refused: they come from a broken fit and would score everything as NaN.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.io import atomic_path, json_text, write_text

T = TypeVar("T")
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_DEPTH = 32  # real configs nest 5 deep; deeper ones would recurse in whatever walks them
FINITE_CHECK_CHUNK = 1 << 24  # elements per isfinite pass: bounds the bool temporary on big tensors


class CheckpointError(ValueError):
    """A weights or config file that cannot be trusted or does not fit; names the file."""


def save(stem: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write STEM.safetensors and STEM.json atomically (tensors first, config last); a config that
    JSON cannot hold (NaN, infinity) is refused before anything is written."""
    stem = Path(stem)
    text = json_text(config, stem.with_suffix(".json"))
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    write_text(stem.with_suffix(".json"), text)


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity
        raise _NotFinite(text)
    return value


def _depth(obj: Any) -> int:
    """How deeply `obj` nests lists and objects, walked without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def load_config(stem: str | Path) -> dict[str, Any]:
    path = Path(stem).with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    config = parse_json(text, path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    return config


def read_numbers(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, float | None]:
    """A JSON object of numbers qarad wrote (timings, a table row), read strictly: every value (or
    each of `keys`, which must be present) a finite number or null, else a CheckpointError naming the
    file, never a KeyError or TypeError later."""
    values = load_config(path)
    for key in values if keys is None else keys:
        value = values.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key not in values or not (value is None or number):
            raise CheckpointError(f"{path}: {key!r} must be a number; was it edited by hand? (delete the file: qarad "
                                  f"writes it again)")
    return values


def parse_json(text: str, source: str | Path) -> Any:
    """Strict JSON from `source` (a file, or a file and line): NaN, infinity (1e999 too) and nesting
    deeper than MAX_CONFIG_DEPTH are refused with a CheckpointError naming it, never a traceback."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise CheckpointError(f"{source}: holds {exc}; NaN or infinity is no valid value here") from None
    except RecursionError:
        raise CheckpointError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or a number too long to read
        raise CheckpointError(f"{source}: not valid JSON ({exc})") from None
    if _depth(value) > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    return value


def read_tensors(stem: str | Path) -> dict[str, torch.Tensor]:
    """Read STEM.safetensors (any names); refuses anything that is not safetensors."""
    path = Path(stem).with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); "
                              "pickled checkpoints are never loaded") from None
    for name, tensor in tensors.items():
        if not _finite(tensor):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinity (a broken fit); not loaded")
    return tensors


def _finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point():
        return True
    return all(bool(torch.isfinite(part).all()) for part in tensor.reshape(-1).split(FINITE_CHECK_CHUNK))


def load_tensors(stem: str | Path, expected: dict[str, tuple[int | None, ...]]) -> dict[str, torch.Tensor]:
    """Read STEM.safetensors and check names and shapes (None = any size along that axis)."""
    path = Path(stem).with_suffix(".safetensors")
    tensors = read_tensors(stem)
    missing, unknown = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unknown:
        raise CheckpointError(f"{path}: tensor names do not match (missing {sorted(missing)}, unknown {sorted(unknown)})")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {got}, expected {shape}")
    return tensors


def _describe(annotation: Any) -> str:
    """A field's type as a hand-editor reads it: "an integer or null", "a list of strings"."""
    args = typing.get_args(annotation)
    if _is_union(annotation):
        parts = [_describe(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    origin = typing.get_origin(annotation) or annotation
    if origin in (tuple, list):
        item = args[0] if args else Any
        return "a list" if item is Any else f"a list of {_describe(item).split(' ', 1)[1]}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    return names.get(origin, f"a {getattr(origin, '__name__', origin)}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


class _WrongType(Exception):
    pass


def _checked(value: Any, annotation: Any) -> Any:
    """`value` if it is of the field type `annotation` (JSON lists become tuples), else _WrongType."""
    if annotation is Any:
        return value
    if _is_union(annotation):
        for option in typing.get_args(annotation):
            try:
                return _checked(value, option)
            except _WrongType:
                pass
        raise _WrongType
    origin, args = typing.get_origin(annotation) or annotation, typing.get_args(annotation)
    if origin is type(None):
        ok = value is None
    elif origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: fixed length
            if len(value) != len(args):
                raise _WrongType
            return tuple(_checked(v, a) for v, a in zip(value, args))
        return tuple(_checked(v, args[0] if args else Any) for v in value)
    elif origin is typing.Literal:
        ok = value in args
    elif isinstance(origin, type):  # str, dict, a nested config dataclass
        ok = isinstance(value, origin)
    else:
        raise TypeError(f"build_config cannot check a field of type {annotation}")
    if not ok:
        raise _WrongType
    return value


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def build_config(cls: type[T], values: dict[str, Any], source: str | Path) -> T:
    """Rebuild a (frozen) dataclass config from JSON, refusing unknown keys and values whose type
    is not their field's (a null where a number belongs, a list for a scalar, "8" for 8)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: {cls.__name__} must be a JSON object, got {_shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise CheckpointError(f"{source}: unknown {cls.__name__} keys {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = _checked(value, hints[key])
        except _WrongType:
            raise CheckpointError(f"{source}: {cls.__name__}.{key} must be {_describe(hints[key])}, "
                                  f"got {_shown(value)}") from None
    try:
        return cls(**converted)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid {cls.__name__}: {exc}") from None


def threshold_json(threshold: float) -> float | None:
    """A detector's decision threshold as saved. Infinity (fitted on too few normal images to set
    one: nothing is flagged) becomes null, which JSON can hold; NaN stays, for the writer to refuse."""
    return None if threshold == math.inf else threshold


def read_threshold(value: Any, source: str | Path) -> float:
    """threshold_json's value back: a finite number, or null for no threshold (infinity)."""
    if value is None:
        return math.inf
    return finite_number(value, "threshold", source)


def finite_number(value: Any, what: str, source: str | Path) -> float:
    if not _is_number(value):
        raise CheckpointError(f"{source}: {what} must be a finite number, got {_shown(value)}")
    return float(value)


def finite_numbers(value: Any, what: str, source: str | Path) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise CheckpointError(f"{source}: {what} must be a list of finite numbers, got {_shown(value)}")
    return [float(v) for v in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_module(stem: str | Path, module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Load `module`'s weights strictly (names and shapes must match); returns the other tensors."""
    tensors = read_tensors(stem)
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing, unknown = set(expected) - set(own), set(own) - set(expected)
    if missing or unknown:
        raise CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: weights do not fit "
                              f"{type(module).__name__} (missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]})")
    for k, v in own.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: tensor {k!r} has shape "
                                  f"{tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    module.load_state_dict(own, strict=True)
    return {k: v for k, v in tensors.items() if not k.startswith(prefix)}
