"""Whole-network artifacts (ONNX exports) made once per arch, in parallel, before any timing.

Timing a network on ONNX Runtime is mostly preparing it: on the 2-core VM a cifar_pool net took
0.65 s to export, 0.3 s to load and 0.8 s to time, and a table's calibration and validation
re-prepared every net in each of their three passes. Exporting each net once, in worker
processes while nothing is being timed, leaves only the load in each pass and keeps the timed
core quiet (no export runs beside a timing).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from search_space.io import atomic_write_bytes

from ._progress import progress


def supports_artifacts(backend) -> bool:
    """Whether ``backend`` has a portable preparation step (:meth:`Backend.artifact`)."""
    from .backends import Backend

    return type(backend).artifact is not Backend.artifact


def default_workers(n: int) -> int:
    """Worker processes for ``n`` exports: every core but one, at most 16 (0: export in-process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cores - 1, 16, n)
    return workers if workers >= 2 else 0


@functools.lru_cache(maxsize=4)
def _space(config_json: str):
    import json

    from search_space import SearchSpace

    return SearchSpace.from_config(json.loads(config_json))


@functools.lru_cache(maxsize=4)
def _backend(settings_json: str):
    import json

    from .backends import make_backend

    return make_backend(**json.loads(settings_json))


def _export(settings_json: str, config_json: str, arch: str, path: str) -> str:
    """One network's artifact written to ``path`` (runs in a worker process or in-process)."""
    from search_space import Subnet

    space, backend = _space(config_json), _backend(settings_json)
    a = space.parse(arch)
    shape = (space.config.in_channels, a.resolution, a.resolution)
    atomic_write_bytes(path, backend.artifact(Subnet(a, space.block_specs(a)), shape))
    return arch


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def make_artifacts(backend, space, archs: Sequence, folder: str | Path, workers: int | None = None,
                   desc: str = "exports") -> dict[str, Path]:
    """``{arch string: artifact file}`` for ``archs`` in ``folder`` (files already there are kept, so a
    resumed job exports only what is missing); ``workers`` processes (default
    :func:`default_workers`; 0: in this process)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = json.dumps(backend.settings(), sort_keys=True)
    config = json.dumps(space.config.to_json(), sort_keys=True)
    # named by what they hold, so that a resumed job finds them whatever the order of archs
    paths = {a: folder / f"{_digest(settings, config, a)}.onnx" for a in dict.fromkeys(str(a) for a in archs)}
    todo = [(a, p) for a, p in paths.items() if not p.exists()]
    workers = default_workers(len(todo)) if workers is None else workers
    bar = progress(len(todo), f"{desc} ({workers or 1} process{'es' if workers > 1 else ''})")
    try:
        if workers and todo:
            # spawn: the parent may hold a CUDA context, which a forked child must not touch
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for _ in pool.map(_export, *zip(*[(settings, config, a, str(p)) for a, p in todo])):
                    bar.update(1)
        else:
            for a, p in todo:
                _export(settings, config, a, str(p))
                bar.update(1)
    finally:
        bar.close()
    return paths
