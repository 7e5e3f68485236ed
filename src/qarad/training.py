"""One training-step helper and resumable train-state checkpoints, shared by every trainer.

A train state is model weights + optimizer moments + the trainer's own running buffers
(safetensors) + the step and optimizer hyper-parameters (JSON). Nothing is pickled, so a state file
from anywhere is safe to open. No RNG state is saved: every random draw of a step comes from
(seed, step), so a resumed run draws exactly what an uninterrupted one would have.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from . import checkpoint


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[torch.Tensor],
                   max_grad_norm: float = 1.0) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


@contextmanager
def step_rng(seed: int, step: int):
    """Seed torch's global RNG (dropout draws from it) from (seed, step) for one step, then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_033 + step)
        yield


def save_state(stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict,
               buffers: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"buffer.{k}": v for k, v in (buffers or {}).items()})
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    checkpoint.save(stem, tensors, {"step": step, "param_groups": opt["param_groups"], **extra})


def load_state(stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               buffers: dict[str, torch.Tensor] | None = None) -> tuple[int, dict]:
    """Restore model, optimizer and `buffers` (copied in place) from `stem`; returns (step, the JSON config)."""
    path, buffers = Path(stem).with_suffix(".safetensors"), buffers or {}
    config = checkpoint.load_config(stem)
    rest = checkpoint.load_module(stem, model, prefix="model.")
    saved = {k.split(".", 1)[1]: rest.pop(k) for k in list(rest) if k.startswith("buffer.")}
    if set(saved) != set(buffers):
        raise checkpoint.CheckpointError(f"{path}: train state holds buffers {sorted(saved)}, "
                                         f"expected {sorted(buffers)}")
    for name, target in buffers.items():
        if saved[name].shape != target.shape:
            raise checkpoint.CheckpointError(f"{path}: buffer {name!r} has shape {tuple(saved[name].shape)}, "
                                             f"expected {tuple(target.shape)}")
        target.copy_(saved[name])
    state: dict[int, dict] = {}
    for name, value in rest.items():
        kind, idx, key = (name.split(".", 2) + ["", ""])[:3]  # optim.<param index>.<slot>
        if kind != "optim" or not idx.isdigit():
            raise checkpoint.CheckpointError(f"{path}: unknown tensor {name!r} in a train state")
        state.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": config["param_groups"]})
    except (KeyError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{stem}: optimizer state does not fit ({exc})") from None
    return int(config["step"]), config
