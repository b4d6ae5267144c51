"""Search on PostgreSQL against a journal file, with 2 Ray workers; and killed workers on PostgreSQL.

1. Throughput: ``--trials`` trials with 2 Ray workers on one machine, the study in a journal
   file (Optuna's file backend, as Ray workers share it) or in a PostgreSQL 15 server started
   for the run in a temporary folder (``tests/postgres_server.py``; durable: fsync on, as a
   real server). Interleaved, ``--repeats`` each; trials/s, medians and the ratio.
2. Kills: ``--kills`` searches of ``--kill-trials`` trials on PostgreSQL with 2 workers, where
   one worker's process dies (``os._exit``) at a random batch; the dead worker's trials must be
   failed by the heartbeat (1 s, grace 2 s), redone once, and the total exact: lost trials
   (fewer completed than asked) and duplicates (an original redone twice, or more completed
   than asked) are counted.

Setting: the cifar space, a stand-in latency table (cpu, roofline cost model) and the stand-in
accuracy of bench_search_common.py, so that the storage dominates.

    PYTHONPATH=.:tests python experiments/bench_search_postgres.py --trials 1000 --repeats 3 --kills 10

Writes experiments/results/cluster/search_postgres.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "experiments"), str(ROOT / "tests")]
from bench_search_common import RESULTS, facts, stand_in_accuracy, stand_in_tables  # noqa: E402
from cluster_kill import audit  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402

KINDS = ("journal", "postgresql")
BEFORE = ("Before `search/_batch_ask.py` (commit ed748b5: Optuna's own calls, a round trip per parameter), "
          "300 trials on this machine took 260.3 s on PostgreSQL against 42.9 s on the journal (16%). "
          "The journal's 2 workers wait on its lock file (Optuna warns of 10 s waits).")


class Accuracy:
    """The stand-in accuracy (picklable for Ray workers)."""

    def __init__(self, space):
        self.space = space

    def __call__(self, archs):
        return stand_in_accuracy(self.space, archs)


class DiesAt:
    """The latency objective, except that the ``n``-th call in a Ray worker process kills it
    (once per run: a marker file says it happened)."""

    def __init__(self, inner, n: int, marker: str, driver_pid: int):
        self.inner, self.n, self.marker, self.driver_pid = inner, n, marker, driver_pid
        self.calls = 0

    def __call__(self, archs):
        self.calls += 1
        if os.getpid() != self.driver_pid and self.calls >= self.n and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.inner(archs)


def setting(folder: Path):
    """The cifar space and its two objectives."""
    from search import Objective, table_latency
    from search_space import SearchSpace

    space = SearchSpace.from_config("cifar")
    table = stand_in_tables(space, folder, ["cpu"])["cpu"]
    return space, [Objective("accuracy", "maximize", Accuracy(space)), table_latency(table, "cpu")]


def main() -> int:
    """Throughput runs, then kill runs; writes the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="trials per throughput run (default 1000)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per storage, interleaved (default 3)")
    ap.add_argument("--kills", type=int, default=10, help="kill runs (default 10)")
    ap.add_argument("--kill-trials", type=int, default=200, help="trials per kill run (default 200)")
    ap.add_argument("--out", default=str(RESULTS / "cluster" / "search_postgres"), help="results stem")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import optuna
    import ray

    from search import Objective, init_ray, run_search
    from search_space.io import atomic_write_json, atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = facts()
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    space, objectives = setting(folder)
    for module in (sys.modules[__name__], sys.modules["bench_search_common"]):
        ray.cloudpickle.register_pickle_by_value(module)  # Ray workers cannot import experiments/
    init_ray(num_cpus=2)
    runs, kills = [], []
    with PostgresServer(durable=True) as pg:
        os.environ["HWNAS_STORAGE_PASSWORD"] = pg.password
        for i in range(args.repeats):
            for kind in KINDS:
                storage = pg.url if kind == "postgresql" else str(folder / f"t{i}.journal")
                start = time.perf_counter()
                study = run_search(space, objectives, args.trials, storage=storage, study_name=f"t{i}", workers=2,
                                   seed=i, progress=False)
                wall = time.perf_counter() - start
                runs.append({"kind": kind, "wall_s": round(wall, 2), "trials_per_s": round(args.trials / wall, 2),
                             **audit(study, args.trials)})
                print(runs[-1], flush=True)
        rng = random.Random(0)
        for i in range(args.kills):
            marker = folder / f"died{i}"
            latency = Objective(objectives[1].name, "minimize", DiesAt(objectives[1], rng.randint(1, 6), str(marker),
                                                                         os.getpid()), device="cpu")
            start = time.perf_counter()
            study = run_search(space, [objectives[0], latency], args.kill_trials, storage=pg.url, study_name=f"k{i}",
                               workers=2, batch_size=10, seed=i, progress=False, heartbeat_interval=1, grace_period=2)
            kills.append({"run": i, "worker_died": marker.exists(), "wall_s": round(time.perf_counter() - start, 2),
                          **audit(study, args.kill_trials)})
            print(kills[-1], flush=True)
    ray.shutdown()

    med = {k: float(np.median([r["trials_per_s"] for r in runs if r["kind"] == k])) for k in KINDS}
    ratio = med["postgresql"] / med["journal"]
    lost, dup = sum(k["lost"] for k in kills), sum(k["duplicates"] for k in kills)
    died = sum(k["worker_died"] for k in kills)
    after = facts()
    summary = {"facts_before": before, "facts_after": after, "trials": args.trials, "runs": runs,
               "median_trials_per_s": med, "postgres_over_journal": round(ratio, 3), "kills": kills,
               "kill_totals": {"runs": len(kills), "worker_died": died, "lost": lost, "duplicates": dup}}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# Search on PostgreSQL vs a journal file, 2 Ray workers ({before['date']}, {before['machine']}, "
             f"load {before['load_average_1m']} -> {after['load_average_1m']})", "",
             f"`PYTHONPATH=.:tests python experiments/bench_search_postgres.py --trials {args.trials} "
             f"--repeats {args.repeats} --kills {args.kills} --kill-trials {args.kill_trials}`", "",
             "Setting: cifar space, stand-in cpu table and stand-in accuracy (bench_search_common.py); NSGA-II; "
             "PostgreSQL 15 on 127.0.0.1 in a temporary folder, fsync on. The machine is shared with other jobs "
             "(see load): runs are interleaved and medians compared.", "",
             "| storage | median trials/s | runs (trials/s) |", "| --- | ---: | --- |"]
    for k in KINDS:
        lines.append(f"| {k} | {med[k]:.1f} | {', '.join(str(r['trials_per_s']) for r in runs if r['kind'] == k)} |")
    lines += ["", f"PostgreSQL / journal throughput: **{ratio:.0%}** (target >= 50%). {BEFORE}", "",
              f"Kill runs: {len(kills)} searches of {args.kill_trials} trials, a worker died in {died}; "
              f"lost trials: **{lost}**, duplicates: **{dup}**, trials redone: "
              f"{sum(k['redone'] for k in kills)}, median wall {np.median([k['wall_s'] for k in kills]):.1f} s."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if lost == 0 and dup == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
