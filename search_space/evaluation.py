"""Accuracy of subnets of a trained supernet, each with BatchNorm recalibrated first."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch
from .supernet import recalibrate_bn

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def fit_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch to the subnet's input resolution (no-op when it already matches)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], resolution: int,
             autocast_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``batches``."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        device_type = x.device.type
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(fit_resolution(x, resolution))
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)


def evaluate_archs(supernet: nn.Module, archs: Sequence[Arch], calib_batches: Batches, eval_batches: Batches,
                   num_calib_batches: int = 20, autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Top-1 accuracy of each arch: activate it, recalibrate BN on ``calib_batches()``
    (training data), then score on ``eval_batches()``. The supernet's BN statistics are
    overwritten; reload the checkpoint to train further."""
    results = []
    for arch in archs:
        supernet.set_active(arch)
        recalibrate_bn(supernet, (fit_resolution(x, arch.resolution) for x, _ in calib_batches()), num_calib_batches)
        results.append(accuracy(supernet, eval_batches(), arch.resolution, autocast_dtype))
    return results
