"""The one place that reads and writes weights: safetensors tensors + a JSON config beside them.

Nothing here unpickles: a pickle renamed to .safetensors fails the safetensors header check and
is reported as such. Configs are rebuilt through their dataclass, so unknown keys are refused.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.io import atomic_path, write_json

T = TypeVar("T")
MAX_CONFIG_BYTES = 1_000_000


class CheckpointError(ValueError):
    """A weights or config file that cannot be trusted or does not fit; names the file."""


def save(stem: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write STEM.safetensors and STEM.json atomically (tensors first, config last)."""
    stem = Path(stem)
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    write_json(stem.with_suffix(".json"), config)


def load_config(stem: str | Path) -> dict[str, Any]:
    path = Path(stem).with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    return config


def read_tensors(stem: str | Path) -> dict[str, torch.Tensor]:
    """Read STEM.safetensors (any names); refuses anything that is not safetensors."""
    path = Path(stem).with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); "
                              "pickled checkpoints are never loaded") from None


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


def build_config(cls: type[T], values: dict[str, Any], source: str | Path) -> T:
    """Rebuild a (frozen) dataclass config from JSON, refusing unknown keys."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: {cls.__name__} must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise CheckpointError(f"{source}: unknown {cls.__name__} keys {sorted(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid {cls.__name__}: {exc}") from None


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
