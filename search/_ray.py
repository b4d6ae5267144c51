"""Ray (imported only when used): joining a cluster, and objectives that run as tasks on the node
owning a device (custom resource ``device:NAME``). The search workers are in :mod:`search._workers`.

A device farm is a Ray cluster whose device nodes start with
``ray start --address HEAD --resources='{"device:h100": 1}'``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Sequence

from ._errors import SearchError
from ._objectives import Objective

DEVICE_PREFIX = "device:"


def _ray():
    try:
        import ray
    except ImportError:
        raise SearchError("Ray is not installed: install ray, or run with one worker and no Ray address") from None
    return ray


def init_ray(address: str | None = None, *, local_devices: Sequence[str] = (), num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local Ray instance whose node owns
    ``local_devices`` (resource ``device:NAME`` = 1 each). Reuses a running instance."""
    ray = _ray()
    if ray.is_initialized():
        return
    # Workers of a local instance must import the same packages as this process.
    opts: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=True)
    try:
        if address:
            ray.init(address=address, **opts)
        else:
            # Workers of a local instance must import the same packages as this process.
            path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
            ray.init(num_cpus=num_cpus, resources={DEVICE_PREFIX + d: 1 for d in local_devices},
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **opts)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"at {address!r}" if address else "locally"
        raise SearchError(f"cannot start or join Ray {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def cluster_devices() -> set[str]:
    """Device names for which the Ray cluster has a ``device:NAME`` resource."""
    ray = _ray()
    return {k[len(DEVICE_PREFIX):] for k in ray.cluster_resources() if k.startswith(DEVICE_PREFIX)}


def node_count() -> int:
    """Alive nodes of the Ray cluster."""
    return sum(1 for n in _ray().nodes() if n.get("Alive"))


def _task_options(resources: dict) -> dict:
    res = dict(resources)
    return dict(num_cpus=res.pop("CPU", 1), num_gpus=res.pop("GPU", 0), resources=res)


def _score(objective: Objective, archs: list) -> Any:
    return objective(archs)


@lru_cache(maxsize=None)
def _remote_score():
    return _ray().remote(_score)  # registered with Ray once per process


def submit_score(objective: Objective, archs: Sequence[Any]):
    """Score ``archs`` as a Ray task on a node with ``objective.resources``; returns an ObjectRef."""
    return _remote_score().options(**_task_options(objective.resources)).remote(objective, list(archs))
