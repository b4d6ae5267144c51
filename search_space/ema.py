"""Exponential moving average of a supernet's weights (BigNAS trains with one).

The average smooths the last epochs' SGD noise; BatchNorm statistics are not averaged because
every evaluation recalibrates them per subnet anyway. Checkpoints store the averaged weights as
the model (what evaluation, export and search use) and the raw ones for an exact resume.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightEMA:
    """Shadow copies of ``model``'s parameters, updated as ``s = d * s + (1 - d) * p``.

    The effective decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so the early average
    is not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay!r} is invalid; expected a number in (0, 1)")
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights into the average (call after each optimizer step)."""
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, self.params, 1.0 - d)  # no_grad: the parameters are only read

    @contextmanager
    def swapped(self) -> Iterator[list[torch.Tensor]]:
        """Within the block the model holds the averaged weights; the raw ones come back after.
        Yields the copy of the raw weights it keeps (a checkpoint stores it for resuming)."""
        raw = self.raw_state()
        try:
            self.apply()
            yield raw
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def raw_state(self) -> list[torch.Tensor]:
        """The raw (trained) weights, for a checkpoint whose model holds the average."""
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def apply(self) -> None:
        """Give the model the averaged weights for good (after the last step)."""
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @torch.no_grad()
    def restore(self, raw: list[torch.Tensor]) -> None:
        """Resume from a checkpoint whose weights (now loaded in the model) are the average:
        they become the shadow, and the model gets its ``raw`` weights back."""
        if len(raw) != len(self.params):
            raise ValueError(f"{len(raw)} raw weight tensors; expected {len(self.params)}, one per parameter")
        for s, p, r in zip(self.shadow, self.params, raw):
            s.copy_(p)
            p.copy_(r)
