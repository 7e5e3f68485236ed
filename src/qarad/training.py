"""One training-step helper and resumable train-state checkpoints, shared by every trainer.

A train state is model weights + optimizer moments (safetensors) + the step and optimizer
hyper-parameters (JSON). Nothing is pickled, so a state file from anywhere is safe to open.
"""
from __future__ import annotations

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


def save_state(stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    checkpoint.save(stem, tensors, {"step": step, "param_groups": opt["param_groups"], **extra})


def load_state(stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore model and optimizer from `stem`; returns (step, the JSON config)."""
    config = checkpoint.load_config(stem)
    rest = checkpoint.load_module(stem, model, prefix="model.")
    state: dict[int, dict] = {}
    for name, value in rest.items():
        _, idx, key = name.split(".", 2)  # optim.<param index>.<slot>
        state.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": config["param_groups"]})
    except (KeyError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{stem}: optimizer state does not fit ({exc})") from None
    return int(config["step"]), config
