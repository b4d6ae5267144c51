"""Atomic file writes (temp file in the same folder + rename), shared by every package.

An interrupted write leaves the previous file intact, never a truncated one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from search_space.errors import UserError


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


def read_text(path: str | Path, what: str, expected: str, error: type[Exception] | None = None) -> str:
    """The UTF-8 text of ``path``; a binary file raises ``error`` (a UserError) in one line naming
    ``what`` and the file, and saying what was ``expected``, instead of a UnicodeDecodeError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise (error or UserError)(f"{what} {str(path)!r} is not a text file (byte {e.object[e.start]:#04x} at offset "
                                   f"{e.start} is not UTF-8): expected {expected}") from None


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Fail, in one line and before any work, when folder ``path`` cannot be created and written:
    a file is in the way, or the nearest existing folder is read-only or immutable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file: expected a folder (created when missing)")
    _check_writable(path, path, flag)
    return path


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Fail, in one line and before any work, when file ``path`` cannot be written: it is a
    folder, or its folder cannot be created or written (files are replaced by rename)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder: expected a file to write")
    _check_writable(path.parent, path, flag)
    return path


# Set by Ray in a job's driver: the job's runtime environment, whose working_dir (from
# `ray job submit --working-dir`) is unpacked in a temporary folder that is the driver's cwd.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job_copy() -> bool:
    """Whether this process is a Ray job's driver running in the temporary copy of its
    ``--working-dir`` (which Ray deletes when no job uses it any more)."""
    try:
        config = json.loads(os.environ.get(RAY_JOB_CONFIG_ENV) or "{}")
    except ValueError:
        return False
    return bool(isinstance(config, dict) and (config.get("runtime_env") or {}).get("working_dir"))


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    if not path.is_absolute() and in_ray_job_copy():
        raise UserError(f"{flag} {str(path)!r} is relative, but this Ray job runs in a temporary copy of its "
                        "--working-dir that Ray deletes: expected an absolute path (e.g. /data/runs/r1)")
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, expected a folder")
    # A real write, not os.access: root passes access checks, yet an immutable folder or a
    # read-only mount still refuses it.
    try:
        fd, probe = tempfile.mkstemp(prefix=".hwnas-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {str(path)!r}: cannot write in {str(existing)!r} ({e.strerror or e}): "
                         "expected a folder you can write to") from None
