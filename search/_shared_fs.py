"""Files that Ray tasks open by path on their own node: a journal or SQLite study storage (the
search workers), a dataset file (the accuracy tasks). Such a file must be seen, at the driver's
path, by every node that runs tasks; on a cluster of several machines that takes a shared
filesystem. Each node is asked by a tiny task pinned to it (no CPU, about a second in all), and a
node that does not see the file stops the run in one line before any work, naming the setting.

The driver's own node is not asked (it sees the driver's files), so a local Ray instance costs
nothing; a Ray client (``ray://``) driver has no node of its own, and every node is asked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Sequence

from ._errors import SearchError
from ._ray import _ray

PROBE_TIMEOUT_S = 60
POSTGRES_HINT = "use postgresql://USER@HOST:5432/DATABASE"


def _sees(path: str, token: str | None) -> bool:
    """Ray task: whether this node sees ``path`` (with ``token``: the file holding that token,
    i.e. the driver's very file, not one of the same name)."""
    try:
        if token is None:
            return os.path.exists(path)
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


def task_nodes() -> list[dict]:
    """Alive nodes that can run tasks (one CPU or more), except the driver's own node."""
    ray = _ray()
    here = None if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()
    return [n for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1 and n["NodeID"] != here]


def describe(node: dict) -> str:
    """``node 1a2b3c4d (host 10.0.0.6)``: a node as messages name it."""
    host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or "?"
    return f"node {node['NodeID'][:8]} (host {host}, {node.get('NodeManagerAddress', '?')})"


def nodes_not_seeing(path: str | Path, same_file: bool) -> list[dict]:
    """The nodes of :func:`task_nodes` whose tasks do not see ``path`` (``same_file``: the
    driver's own file there, checked with a token file written beside it; else any file)."""
    nodes = task_nodes()
    if not nodes:
        return []
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path, token, probe = Path(path).absolute(), None, None
    if same_file:
        folder = path.parent
        while not folder.is_dir() and folder != folder.parent:  # the study's folder may come later
            folder = folder.parent
        token = uuid.uuid4().hex
        probe = folder / f".hwnas-shared-check-{token[:12]}"
        probe.write_text(token)
    try:
        task = ray.remote(_sees)
        refs = [task.options(num_cpus=0, max_retries=0, name="hwnas shared-filesystem check",
                             scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe or path), token) for n in nodes]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        if pending:
            late = [describe(n) for n, r in zip(nodes, refs) if r in pending]
            for r in pending:
                ray.cancel(r, force=True)
            raise SearchError(f"cannot check whether {', '.join(late)} see {str(path)!r}: no answer in "
                              f"{PROBE_TIMEOUT_S} s (is the node alive?)")
        missing = []
        for n, r in zip(nodes, refs):
            try:
                if not ray.get(r):
                    missing.append(n)
            except ray.exceptions.RayError:  # the node died meanwhile: it runs no task
                pass
        return missing
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)


def check_storage_shared(url: str, shown: str, setting: str = "storage") -> None:
    """Refuse, in one line naming ``setting``, a journal or SQLite file storage (``url`` as
    :func:`search._storage.storage_url` gives it) that the search workers could not share: a
    node that does not see the driver's file, or, for SQLite, nodes on more than one host (its
    locks do not hold over a network filesystem). RDB servers and in-memory storages pass."""
    if url.startswith("journal:"):
        kind, path = "journal", url[len("journal:"):]
    elif url.startswith("sqlite:///"):
        kind, path = "SQLite", url[len("sqlite:///"):]
    else:
        return
    if kind == "SQLite":
        ray = _ray()
        hosts = {n.get("NodeManagerAddress") for n in task_nodes()}
        if not ray.util.client.ray.is_connected():
            hosts.add(ray.util.get_node_ip_address())
        if len(hosts) > 1:
            raise SearchError(f"{setting} {shown!r} is an SQLite file, which serves the processes of one host, but "
                              f"the search workers run on {len(hosts)} hosts ({', '.join(sorted(map(str, hosts)))}): "
                              f"{POSTGRES_HINT} (an SQLite file's locks do not hold over a network filesystem)")
    missing = nodes_not_seeing(path, same_file=True)
    if missing:
        raise SearchError(f"{setting} {shown!r} is {'an' if kind == 'SQLite' else 'a'} {kind} file that {_nodes(missing)} of the Ray cluster "
                          f"do{'es' if len(missing) == 1 else ''} not see at that path, so search workers there "
                          f"could not open the study: {POSTGRES_HINT}, or put the file on a filesystem every "
                          "node mounts at the same path (a file storage needs a shared filesystem)")


def check_readable_everywhere(path: str | Path, setting: str, use: str) -> None:
    """Refuse, in one line naming ``setting``, a file or folder that some node running tasks
    does not have at ``path`` (``use``: what the tasks there do with it)."""
    missing = nodes_not_seeing(path, same_file=False)
    if missing:
        raise SearchError(f"{setting} {str(path)!r} is missing on {_nodes(missing)} of the Ray cluster, where "
                          f"{use}: copy it to that path on every node, or put it on a shared filesystem")


def _nodes(nodes: Sequence[dict]) -> str:
    return ", ".join(describe(n) for n in nodes[:3]) + (f" and {len(nodes) - 3} more nodes" if len(nodes) > 3 else "")
