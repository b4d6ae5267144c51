"""Device choice and multi-GPU data parallelism (PyTorch DDP under torchrun) for supernet training.

Why DDP needs care here: a supernet forward touches only the active subnet's parameters, and
one training step runs several subnets (sandwich rule) with one optimizer step. So the model is
wrapped with ``find_unused_parameters=True`` (a parameter no subnet of this step used gets no
gradient and is skipped by the optimizer, as on one GPU), and every backward but the step's last
runs under ``no_sync()``: gradients accumulate locally and are all-reduced once, after the last
subnet. DDP's "used locally" map is kept across ``no_sync`` backwards, so parameters that only
earlier subnets used (e.g. the largest subnet's wider kernels) are averaged across ranks too.
Every rank samples the same subnets (same seed), so ranks stay in step and balanced; each takes
its slice of the same global batch.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


class DeviceError(UserError):
    """An unknown or unavailable device name."""


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device, checked."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {str(name)!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(name)!r} requested but CUDA is not available; expected 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(name)!r} does not exist; expected an index below {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise DeviceError(f"device {str(name)!r} is not supported; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress."""
        return self.rank == 0

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's equal slice of each global-batch tensor."""
        if not self.distributed:
            return tensors
        n = tensors[0].shape[0]
        if n % self.world_size:
            raise UserError(f"batch of {n} cannot be split over {self.world_size} processes; "
                            f"expected a batch size divisible by the world size")
        return tuple(t.tensor_split(self.world_size)[self.rank] for t in tensors)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of ``value`` over all ranks (itself on one process)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.distributed:
            dist.barrier()


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """One process: the resolved ``device``. Under torchrun (``WORLD_SIZE`` > 1): join the process
    group (NCCL on CUDA, gloo on CPU) and use GPU ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, device=wanted)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` itself on one process; a DDP wrapper (see the module docstring) otherwise."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # No buffer sync per forward: each rank keeps its own BN statistics (they are recalibrated
    # before any evaluation anyway), which saves a broadcast per subnet. Newer torch renamed the flag.
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})
    return ddp(model, device_ids=ids, find_unused_parameters=True, **no_buffer_sync)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group (no-op on one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def maybe_no_sync(model: nn.Module, skip_sync: bool):
    """``model.no_sync()`` for a DDP model when ``skip_sync``; otherwise a no-op context."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
