"""Supernet checkpoints: weights plus the space they belong to, written atomically.

Format (``torch.save`` of a dict): ``format="hwnas-supernet"``, ``version``, ``space``
(the validated config as plain data), ``space_fingerprint``, ``model`` (state dict),
``meta`` (free-form: epochs, accuracies, ...). Training may add ``train_state`` for resume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import UserError
from .io import atomic_torch_save
from .space import SearchSpace
from .supernet import Supernet

FORMAT, VERSION = "hwnas-supernet", 1


class CheckpointError(UserError):
    """A missing, corrupt or foreign checkpoint."""


def save_supernet(path: str | Path, supernet: Supernet, meta: dict | None = None, **extra) -> Path:
    """Save ``supernet`` with its space; ``extra`` keys (e.g. ``train_state``) are stored alongside."""
    space = supernet.space
    state = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
    blob = {"format": FORMAT, "version": VERSION, "space": space.config.to_json(),
            "space_fingerprint": space.fingerprint, "model": state, "meta": meta or {}, **extra}
    return atomic_torch_save(blob, path)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """Load and check a checkpoint dict (tensors on the CPU; ``mmap``: read lazily from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found: expected a file written by 'hwnas supernet train'")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not readable ({type(e).__name__}): expected a torch file written by hwnas") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an hwnas supernet checkpoint (format {blob.get('format') if isinstance(blob, dict) else None!r}, expected {FORMAT!r})")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has version {blob.get('version')!r}, expected {VERSION}")
    return blob


def checkpoint_meta(path: str | Path) -> dict:
    """The ``meta`` of a checkpoint (dataset, split seed, plan) without reading its weights
    (memory-mapped: a cifar_pool checkpoint is 1 GB)."""
    return dict(read_checkpoint(path, mmap=True).get("meta") or {})


def load_supernet(path: str | Path, space: SearchSpace | None = None) -> tuple[Supernet, dict]:
    """Rebuild the supernet of a checkpoint; with ``space`` given, refuse a checkpoint of another space."""
    blob = read_checkpoint(path)
    ck_space = SearchSpace.from_config(blob["space"])
    if space is not None and space.fingerprint != blob["space_fingerprint"]:
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to space {ck_space.name!r} ({blob['space_fingerprint']}), "
                              f"expected space {space.name!r} ({space.fingerprint})")
    net = Supernet(ck_space)
    net.load_state_dict(blob["model"])
    return net, blob


def checkpoint_hash(path: str | Path) -> str:
    """Short content hash of a file, recorded with every number derived from it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
