"""Where a fit runs: the device, and data-parallel training across processes (torch.distributed).

The one owner of everything distributed; the training loops only call these helpers.

Under `torchrun --nproc-per-node N -m qarad.cli fit ...` every process runs the same fit. Each
draws the same global batch from the (seed, step) generators, keeps its own contiguous slice
(`local`), and DistributedDataParallel averages the gradients, so a step sees the same global
batch whatever N. Losses that are a ratio over the batch (weighted means, masked token means) take
their denominator over the whole global batch, so averaging the ranks' gradients gives the
global batch's gradient. Only rank 0 writes files (`on_main`: the others wait at a barrier), and
checkpoints hold the unwrapped module, so a fit resumes with any number of processes.

Without torchrun's environment (WORLD_SIZE unset or 1) nothing here touches torch.distributed
and every helper is the identity: a one-process fit runs exactly the code it always ran.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
# rank 0 alone renders the corpus and fits the QAW scorer while the others wait at a barrier;
# torch's default (10 min NCCL, 30 min gloo) is shorter than a large corpus can take
TIMEOUT = timedelta(hours=2)


def resolve_device(name: str = "cpu") -> torch.device:
    """cpu, cuda or auto (cuda when present) -> a torch.device; under torchrun, cuda is this
    process's own GPU (LOCAL_RANK)."""
    index = name[len("cuda:"):] if isinstance(name, str) and name.startswith("cuda:") else None
    if name not in ("cpu", "cuda", "auto") and not (index and index.isdigit()):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device: str = "cpu") -> Iterator[torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU) for
    the block, and yield this process's device. Without torchrun it only resolves the device."""
    dev = resolve_device(device)
    owned = _launched() and not dist.is_initialized()
    if owned:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield dev
    finally:
        if owned:
            dist.destroy_process_group()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), also outside a session."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def on_main(work: Callable[[], T]) -> T | None:
    """Run `work` on rank 0 only (writing files), then let every rank past a barrier; returns its
    result on rank 0 and None elsewhere."""
    result = work() if is_main() else None
    barrier()
    return result


def check_batch(batch_size: int) -> None:
    """A global batch splits into equal slices, one per process."""
    if batch_size % world_size():
        raise ValueError(f"--batch-size {batch_size} does not split over {world_size()} processes; "
                         "choose a multiple of the process count")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (dim 0); the whole batch with one process."""
    n = world_size()
    if n == 1:
        return t
    size = len(t) // n
    return t[rank() * size:(rank() + 1) * size]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes, else `model`.
    Save and restart through the unwrapped module, never through the wrapper."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _comm_device() -> torch.device:
    """Where collectives run: NCCL only moves GPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the ranks, on `t`'s device (a new tensor; `t` itself with one process)."""
    if world_size() == 1:
        return t
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """The ranks' equal-sized `t` concatenated in rank order along dim 0: the global batch's."""
    if world_size() == 1:
        return t
    mine = t.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts).to(t.device)


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`total / count` over the whole global batch, as a loss whose gradients DDP averages:
    this rank's `total` times N over the summed `count` (clamped to 1, as an empty batch has)."""
    n = world_size()
    if n == 1:
        return total / count.clamp_min(1)
    return total * n / all_sum(count.detach()).clamp_min(1)


def mean_value(value: float) -> float:
    """A step's loss as logged: the mean over the ranks (each rank's loss is its share)."""
    if world_size() == 1:
        return value
    return float(all_sum(torch.tensor([value], dtype=torch.float64))[0]) / world_size()
