"""Batch augmentations that training applies inside a step (the data pipeline reuses them)."""

from __future__ import annotations

import torch


def cutout(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Zero a (size/2)-square around ``centres`` (a (2, n) int tensor of row and column, one
    per sample) of a normalised NCHW batch (DeVries & Taylor 2017): the hole is the mean
    colour, and squares may reach past the border."""
    n, _, h, w = x.shape
    half = max(1, h // 4)
    rows = torch.arange(h, device=x.device).view(1, h) - centres[0].view(n, 1)  # (n, h) offsets from the centre
    cols = torch.arange(w, device=x.device).view(1, w) - centres[1].view(n, 1)  # (n, w)
    rows, cols = (rows >= -half) & (rows < half), (cols >= -half) & (cols < half)
    hole = rows.view(n, 1, h, 1) & cols.view(n, 1, 1, w)
    return x.masked_fill(hole, 0.0)


def random_cutout(x: torch.Tensor) -> torch.Tensor:
    """:func:`cutout` at uniform random centres from the global torch RNG of ``x``'s device
    (which training checkpoints, so a resumed run draws the same holes)."""
    n, _, h, _ = x.shape
    return cutout(x, torch.randint(0, h, (2, n), device=x.device))
