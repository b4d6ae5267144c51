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

Only rank 0 writes (checkpoint, metrics log, progress lines, the dataset cache: rank 0 loads the
dataset first, the others read its cache after it). Decisions that end training early (a time
limit) are agreed across ranks (:meth:`DistContext.agree`), so no rank waits in a collective that
the others left. A checkpoint resumes on any number of processes: see
:func:`search_space.training.train_supernet` for what stays the same.
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


class DistSetupError(UserError):
    """A multi-process launch that cannot start: torchrun's environment incomplete, more
    processes than GPUs, or a process group that cannot be joined."""


# What torchrun sets for every worker; env:// initialisation needs all of them.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a decision all ranks act on
        together, such as stopping at a time limit)."""
        if not self.distributed:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def share(self, obj):
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order (``[value]`` on one process)."""
        if not self.distributed:
            return [float(value)]
        out = [torch.zeros(1, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([float(value)], device=self.device))
        return [t.item() for t in out]

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first, the others after it (e.g. rank 0 fills a cache that the
        others then read instead of writing it too). If rank 0 fails, torchrun stops the rest."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """One process: the resolved ``device``. Under torchrun (``WORLD_SIZE`` > 1): join the process
    group (NCCL on CUDA, gloo on CPU) and use GPU ``LOCAL_RANK``. A launch that cannot work (an
    incomplete torchrun environment, more processes than GPUs, an explicit ``cuda:N``, a group
    that cannot be joined) raises a one-line :class:`DistSetupError` before any training."""
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        return DistContext(device=resolve_device(device))
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise DistSetupError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: expected a launch by torchrun "
                             "(torchrun --nproc_per_node=N -m hwnas supernet train ...), or WORLD_SIZE unset")
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world:
        raise DistSetupError(f"RANK={rank} is outside WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        if wanted.index is not None:
            raise DistSetupError(f"--device {str(device)!r} under torchrun: expected 'cuda' or 'auto' "
                                 "(each process takes GPU LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank >= torch.cuda.device_count():
            raise DistSetupError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                                 "expected --nproc_per_node at most the number of GPUs")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    backend = "nccl" if wanted.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, device_id=wanted if wanted.type == "cuda" else None)
        except (RuntimeError, ValueError, OSError) as e:  # DistBackendError/DistNetworkError are RuntimeErrors
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise DistSetupError(f"rank {rank} could not join the {backend} process group at "
                                 f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({first[:200]}): "
                                 "expected every rank started by one torchrun") from None
    return DistContext(rank=rank, world_size=world, device=wanted)


def _env_int(name: str, default: str | None = None) -> int:
    """An integer environment variable (torchrun's), or a one-line DistSetupError."""
    text = os.environ.get(name, default)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DistSetupError(f"{name}={text!r} is invalid: expected an integer, as torchrun sets it") from None


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
