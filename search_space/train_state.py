"""What a resumed training run needs besides the weights: RNG states and the metrics log.

Checkpoints hold a ``train_state`` dict (see :func:`search_space.training.train_supernet`);
this module captures and restores its random-number part and writes the per-epoch log.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_text


def capture_rng(arch_rng: np.random.Generator, device: torch.device) -> dict:
    """Every random state training draws from: torch (CPU and ``device``'s CUDA generator),
    numpy's global state, Python's ``random``, and the generator that samples subnets."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "arch_rng": arch_rng.bit_generator.state,
    }


def restore_rng(state: dict, arch_rng: np.random.Generator, device: torch.device) -> None:
    """Put back the states :func:`capture_rng` returned (in place, ``arch_rng`` included)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    arch_rng.bit_generator.state = state["arch_rng"]


def write_metrics(path: str | Path, records: list[dict]) -> Path:
    """Write the whole per-epoch log as JSON lines, atomically (the checkpoint holds the same
    records, so a resumed run rewrites a log that agrees with its weights)."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics log written by :func:`write_metrics`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
