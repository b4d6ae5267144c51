"""A Ray node killed mid-search on a local multi-node cluster (``ray.cluster_utils.Cluster``), for
the tests and ``experiments/bench_cluster_kill.py``: the search must end with its exact total, no
trial counted twice, and without hanging."""

from __future__ import annotations

import threading
import time
from pathlib import Path


class NodeOf:
    """An objective that appends the Ray node it runs on to a file, then scores: the killer
    below learns from it where search workers run."""

    def __init__(self, path, score):
        self.path, self.score = str(path), score

    def __call__(self, archs):
        import ray

        with open(self.path, "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")
        return self.score(archs)


def audit(study, n: int) -> dict:
    """Completed, lost and duplicated trials of a finished study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    redone = {}
    for t in done:
        if "failed_trial" in t.system_attrs:
            redone.setdefault(t.system_attrs["failed_trial"], []).append(t.number)
    stuck = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return {"completed": len(done), "lost": max(0, n - len(done)), "stuck": stuck,
            "duplicates": max(0, len(done) - n) + sum(len(v) - 1 for v in redone.values()),
            "redone": len(redone), "failed": sum(t.state == TrialState.FAIL for t in trials)}


def search_killing_a_node(cluster, search, log: Path, after: int = 3, timeout_s: float = 120) -> dict:
    """Run ``search()`` (returns the study) while a thread kills the first node other than the
    head on which a search worker scored ``after`` batches (``log`` is a :class:`NodeOf` file):
    its raylet and worker processes die at once (no graceful stop). Returns what was killed,
    when, and the study."""
    head = cluster.head_node.node_id
    killed, stop = {}, threading.Event()

    def killer():
        start = time.monotonic()
        while not stop.wait(0.05) and time.monotonic() - start < timeout_s:
            ids = log.read_text().split() if log.exists() else []
            workers = {i: ids.count(i) for i in ids if i != head}
            target = next((i for i, n in workers.items() if n >= after), None)
            if target is not None:
                node = next(n for n in cluster.worker_nodes if n.node_id == target)
                killed.update(node=target, batches_before=len(ids), after_s=round(time.monotonic() - start, 2))
                cluster.remove_node(node, allow_graceful=False)
                return

    thread = threading.Thread(target=killer, daemon=True)
    start = time.monotonic()
    thread.start()
    try:
        study = search()
    finally:
        stop.set()
        thread.join()
    return {"study": study, "killed": killed, "wall_s": round(time.monotonic() - start, 2)}
