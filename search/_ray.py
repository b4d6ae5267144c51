"""Ray (imported only when used): joining a cluster, and objectives that run as tasks on the node
owning a device (custom resource ``device:NAME``). The search workers are in :mod:`search._workers`.

A device farm is a Ray cluster whose device nodes start with
``ray start --address HEAD --resources='{"device:h100": 1}'``.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any, Sequence

from ._errors import SearchError
from ._objectives import Objective

DEVICE_PREFIX = "device:"
# ray.init waits minutes for a cluster address that nothing answers; a TCP connect says so in seconds.
CONNECT_TIMEOUT_S = 5


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
    if address:
        check_address(address)
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
            # address "local": a new instance, even where another cluster runs on this machine (without
            # it Ray joins the latest one it finds in /tmp/ray, and refuses num_cpus there).
            ray.init(address="local", num_cpus=num_cpus, resources={DEVICE_PREFIX + d: 1 for d in local_devices},
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **opts)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"at {address!r}" if address else "locally"
        raise SearchError(f"cannot start or join Ray {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def check_address(address: str) -> None:
    """Fail in seconds, in one line naming ``address``, when no Ray cluster answers there."""
    if address == "auto":
        return  # Ray finds the local cluster itself, and says at once when there is none
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        raise SearchError(f"Ray address {address!r} is malformed: expected HOST:PORT of the head node "
                          "(e.g. 10.0.0.5:6379), ray://HOST:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SearchError(f"cannot reach a Ray cluster at {address!r}: {e.strerror or type(e).__name__}: "
                          "start one there with 'ray start --head' or fix --ray-address") from None


def check_resources(objectives: Sequence[Objective]) -> None:
    """Fail before any work, in one line, when an objective needs a resource (``device:NAME``,
    GPU, ...) that no alive node of the cluster has: Ray would leave its task pending for ever."""
    for o in objectives:
        require_resources(f"objective {o.name!r}", o.resources)


def require_resources(what: str, resources: dict) -> None:
    """Raise a one-line :class:`SearchError` (``what`` needs ...) when no alive node of the
    cluster has each of ``resources`` (``{"device:cpu": 1}``), naming the devices nodes do have."""
    nodes = [n.get("Resources", {}) for n in _ray().nodes() if n.get("Alive")]
    for key, amount in resources.items():
        if not any(res.get(key, 0) >= amount for res in nodes):
            devices = sorted({k[len(DEVICE_PREFIX):] for res in nodes for k in res if k.startswith(DEVICE_PREFIX)})
            how = (f"ray start --address HEAD --resources='{{\"{key}\": 1}}'" if key.startswith(DEVICE_PREFIX)
                   else f"ray start --address HEAD on a machine with {key}")
            raise SearchError(f"{what} needs Ray resource {key!r}: {amount}, which no node of the "
                              f"cluster has (devices on nodes: {devices or 'none'}): start a node with {how}")


def cluster_devices() -> set[str]:
    """Device names for which the Ray cluster has a ``device:NAME`` resource."""
    ray = _ray()
    return {k[len(DEVICE_PREFIX):] for k in ray.cluster_resources() if k.startswith(DEVICE_PREFIX)}


def node_count() -> int:
    """Alive nodes of the Ray cluster."""
    return sum(1 for n in _ray().nodes() if n.get("Alive"))


def task_options(resources: dict) -> dict:
    """Ray ``.options()`` of a task that needs ``resources`` (``CPU``/``GPU`` counts, custom keys)."""
    res = dict(resources)
    return dict(num_cpus=res.pop("CPU", 1), num_gpus=res.pop("GPU", 0), resources=res)


def _score(objective: Objective, archs: list) -> Any:
    return objective(archs)


@lru_cache(maxsize=None)
def _remote_score():
    return _ray().remote(_score)  # registered with Ray once per process


def submit_score(objective: Objective, archs: Sequence[Any]):
    """Score ``archs`` as a Ray task on a node with ``objective.resources``; returns an ObjectRef."""
    return (_remote_score().options(**task_options(objective.resources), name=f"hwnas score {objective.name}")
            .remote(objective, list(archs)))  # named for the Ray dashboard
