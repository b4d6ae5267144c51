"""Atomic file writes (temp file in the same folder + rename), shared by every package.

An interrupted write leaves the previous file intact, never a truncated one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[object], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> Path:
    """Write JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_png(fig, path: str | Path, dpi: int = 110, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG atomically, then close it (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **savefig_kwargs))
    finally:
        plt.close(fig)


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
