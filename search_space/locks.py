"""Locks between processes on a lock file (``flock``), shared by the run folder lock
(:func:`hwnas.stages.lock_run_dir`) and the study lock (:mod:`search._lock`).

The kernel releases an ``flock`` when its process dies, so a killed holder never leaves a stale
lock; the file keeps who held it last (pid, host, start), for the message of the one refused."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator


class LockHeld(Exception):
    """Another live process holds the lock; ``holder`` is what it wrote ({} if unreadable)."""

    def __init__(self, holder: dict):
        super().__init__(describe(holder))
        self.holder = holder


def describe(holder: dict) -> str:
    """``pid 4711 on node0, started 2026-12-06 12:00:00``."""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _busy(e: OSError) -> bool:
    return e.errno in (errno.EAGAIN, errno.EACCES)


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # being written at this instant
        return {}


@contextlib.contextmanager
def file_lock(path: str | Path, attempts: int = 5) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; raise
    :class:`LockHeld` if another process holds it. A few short retries: a reader
    (:func:`lock_holder`) takes a shared lock for an instant."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if not _busy(e):
                    raise
                if attempt == attempts - 1:
                    raise LockHeld(_read(fd)) from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": sys.argv[1:]}
        os.ftruncate(fd, 0)  # not atomic (the file is the lock itself): readers tolerate a partial write
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(path: str | Path) -> dict | None:
    """What the live holder of the lock on ``path`` wrote ({pid, host, started, command}), or
    None when no live process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:  # a shared lock fails only while a holder has the exclusive one
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if not _busy(e):
                raise
            return _read(fd)
        return None
    finally:
        os.close(fd)  # releases the shared lock, if taken
