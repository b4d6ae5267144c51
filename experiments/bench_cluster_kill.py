"""A Ray worker node killed mid-search, repeated: a 3-node local Ray cluster (head + 2 device nodes,
``ray.cluster_utils.Cluster``) searches with 3 workers on a PostgreSQL 15 study; in every run the
first node other than the head on which a worker scored ``--after`` batches is killed at once
(raylet and workers, no graceful stop), and a fresh node with the same device resource joins after
the run. Ray re-runs the dead node's workers elsewhere; their trials stop beating (1 s, grace 2 s)
and are failed and redone once. Counted per run: lost trials (fewer completed than asked), duplicates
(an original redone twice, or more completed than asked), trials left RUNNING/WAITING, wall time;
``--baseline`` runs without a kill give the wall time to compare with.

Setting: the cifar space, a stand-in cpu table and the stand-in accuracy of bench_search_common.py.

    PYTHONPATH=.:tests python experiments/bench_cluster_kill.py --runs 10 --trials 300

Writes experiments/results/cluster/cluster_kill.{json,md}. The CI keeps a short version:
tests/test_cluster.py::test_a_killed_worker_node_loses_no_trial_and_does_not_hang.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "experiments"), str(ROOT / "tests")]
from bench_search_common import RESULTS, facts  # noqa: E402
from bench_search_postgres import setting  # noqa: E402
from cluster_kill import NodeOf, audit, search_killing_a_node  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402

NODE = {"object_store_memory": 80 * 2**20, "include_dashboard": False}


def main() -> int:
    """Baseline runs, then kill runs; writes the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="kill runs (default 10)")
    ap.add_argument("--baseline", type=int, default=2, help="runs without a kill (default 2)")
    ap.add_argument("--trials", type=int, default=300, help="trials per run (default 300)")
    ap.add_argument("--workers", type=int, default=3, help="search workers (default 3)")
    ap.add_argument("--after", type=int, default=3, help="batches a worker scored on a node before it is killed")
    ap.add_argument("--out", default=str(RESULTS / "cluster" / "cluster_kill"), help="results stem")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import optuna
    import ray
    from ray.cluster_utils import Cluster

    from search import Objective, run_search
    from search_space.io import atomic_write_json, atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = facts()
    folder = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    space, (accuracy, latency) = setting(folder)
    for name in ("bench_search_common", "bench_search_postgres", "cluster_kill", __name__):
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])  # Ray workers cannot import experiments/
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **NODE})
    devices = {d: cluster.add_node(num_cpus=2, resources={f"device:{d}": 1}, **NODE).node_id for d in ("a", "b")}
    cluster.wait_for_nodes()
    cluster.connect()
    runs = []
    with PostgresServer(durable=True) as pg:
        os.environ["HWNAS_STORAGE_PASSWORD"] = pg.password
        for i in range(args.baseline + args.runs):
            kill = i >= args.baseline
            log = folder / f"nodes{i}"
            objs = [accuracy, Objective(latency.name, "minimize", NodeOf(log, latency), device="cpu")]

            def search():
                return run_search(space, objs, args.trials, storage=pg.url, study_name=f"run{i}",
                                  workers=args.workers, batch_size=10, seed=i, progress=False, heartbeat_interval=1,
                                  grace_period=2, stall_timeout=120)

            if kill:
                result = search_killing_a_node(cluster, search, log, after=args.after)
            else:
                start = time.monotonic()
                result = {"study": search(), "killed": {}, "wall_s": round(time.monotonic() - start, 2)}
            killed = result["killed"].get("node")
            for d, node_id in list(devices.items()):  # the node comes back, as a restarted machine would
                if node_id == killed:
                    devices[d] = cluster.add_node(num_cpus=2, resources={f"device:{d}": 1}, **NODE).node_id
            cluster.wait_for_nodes()
            on = sorted(set(log.read_text().split()))
            runs.append({"run": i, "kill": kill, "killed": bool(killed), "kill_after_s": result["killed"].get("after_s"),
                         "wall_s": result["wall_s"], "worker_nodes": len(on), **audit(result["study"], args.trials)})
            print(runs[-1], flush=True)
    ray.shutdown()
    cluster.shutdown()

    kills = [r for r in runs if r["kill"]]
    base = [r for r in runs if not r["kill"]]
    totals = {k: sum(r[k] for r in kills) for k in ("killed", "lost", "duplicates", "stuck", "redone")}
    after = facts()
    summary = {"facts_before": before, "facts_after": after, "args": vars(args), "runs": runs, "kill_totals": totals,
               "median_wall_s": {"kill": float(np.median([r["wall_s"] for r in kills])) if kills else None,
                                 "baseline": float(np.median([r["wall_s"] for r in base])) if base else None}}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), summary)
    med = summary["median_wall_s"]
    lines = [f"# A Ray worker node killed mid-search ({before['date']}, {before['machine']}, "
             f"load {before['load_average_1m']} -> {after['load_average_1m']})", "",
             f"`PYTHONPATH=.:tests python experiments/bench_cluster_kill.py --runs {args.runs} --baseline "
             f"{args.baseline} --trials {args.trials} --workers {args.workers} --after {args.after}`", "",
             "Setting: local Ray cluster (head 1 CPU + 2 device nodes of 2 CPUs), PostgreSQL 15 on 127.0.0.1 "
             "(fsync on), cifar space with stand-in cpu table and accuracy, NSGA-II, batches of 10, heartbeat "
             "1 s / grace 2 s, stall timeout 120 s. In each kill run the first non-head node where a worker "
             f"scored {args.after} batches is killed (raylet and workers, no graceful stop); a fresh node "
             "joins after the run.", "",
             "| run | node killed | kill at s | wall s | completed | lost | duplicates | left running | redone |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['run']} | {'yes' if r['killed'] else ('-' if not r['kill'] else 'no')} | "
              f"{r['kill_after_s'] if r['kill_after_s'] is not None else '-'} | {r['wall_s']} | {r['completed']} | "
              f"{r['lost']} | {r['duplicates']} | {r['stuck']} | {r['redone']} |" for r in runs]
    lines += ["", f"Kill runs: {len(kills)}, a node killed in {totals['killed']}; lost trials: **{totals['lost']}**, "
              f"duplicates: **{totals['duplicates']}**, left running: {totals['stuck']}, trials redone: "
              f"{totals['redone']}; median wall {med['kill']} s with a kill, {med['baseline']} s without."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if totals["lost"] == 0 and totals["duplicates"] == 0 and totals["stuck"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
