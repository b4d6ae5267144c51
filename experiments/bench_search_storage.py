"""Search time by study storage: in memory, Optuna's journal file, and hwnas's buffered journal.

``hwnas run`` keeps its study in a journal file so that an interrupted search resumes. Optuna's
file backend locks, appends and fsyncs once per storage operation (23 per trial in the cifar
space). ``search._storage.BufferedJournalFileBackend`` writes the same operations in batches.
Each configuration runs ``--repeats`` times, interleaved, each in a fresh process, on the
setting of ``bench_search_speed.py`` (cifar space, the shipped tables, a predictor file).

    PYTHONPATH=. python experiments/bench_search_storage.py --trials 4000 --repeats 3 \
        --predictor experiments/results/supernet_cifar/cifar_sandwich_b1024/predictor_cifar_best.pt

The predictor file (19 MB, not committed) comes from refitting a committed accuracy dataset on the CPU:
``python experiments/gpu_predictor_cifar.py --device cpu --from-dataset
experiments/results/supernet_cifar/cifar_sandwich_b1024/predictor_cifar_dataset.jsonl --repeat-from
experiments/results/supernet_cifar/cifar_sandwich_b1024/predictor_cifar_repeat.jsonl --out experiments/results/supernet_cifar/cifar_sandwich_b1024``
(about 5 minutes). The file the numbers were measured with, ``experiments/results/predictor/predictor_cifar_best.pt``,
was removed on 2026-11-30: its GBT settings no longer load.

Writes experiments/results/search/search_storage.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_search_common import RESULTS, add_setting_args, facts, resolve_tables  # noqa: E402
from bench_search_speed import _setting  # noqa: E402

KINDS = ("memory", "journal", "buffered_journal")


def run_one(kind: str, trials: int, args, queue) -> None:
    """One search in this (fresh) process; puts wall/CPU seconds and the front on ``queue``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search import Budget, latency_name, run_search
    from search._storage import BufferedJournalFileBackend, flush_storage

    space, _, _, objectives, (first, budget), desc = _setting(args)
    path = str(Path(tempfile.mkdtemp()) / "study.journal")
    storage = {"memory": lambda: None, "journal": lambda: JournalStorage(JournalFileBackend(path)),
               "buffered_journal": lambda: JournalStorage(BufferedJournalFileBackend(path))}[kind]()
    wall, cpu = time.perf_counter(), time.process_time()
    study = run_search(space, objectives, trials, budgets=[Budget(latency_name(first), budget)], seed=0,
                       storage=storage, progress=False)
    if storage is not None:
        flush_storage(storage)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    front = sorted(str(t.params) for t in study.best_trials)
    queue.put({"kind": kind, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "setting": desc,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "front_hash": hashlib.sha256("\n".join(front).encode()).hexdigest()[:16], "front_size": len(front),
               "journal_mb": round(Path(path).stat().st_size / 1e6, 1) if Path(path).exists() else 0.0})


def in_child(kind: str, trials: int, args) -> dict:
    """Run :func:`run_one` in a forked process and return its result."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=run_one, args=(kind, trials, args, q))
    p.start()
    result = q.get(timeout=3600)
    p.join()
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    """Interleaved repeats of every storage kind; medians and ratios to memory."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4000, help="trials per search (default 4000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per storage, interleaved (default 3)")
    ap.add_argument("--out", default=str(RESULTS / "search" / "search_storage"), help="results stem")
    add_setting_args(ap)
    args = ap.parse_args()
    from search_space import SearchSpace

    args.table = resolve_tables(args, SearchSpace.from_config("cifar"))
    before = facts()
    runs = [in_child(kind, args.trials, args) for _ in range(args.repeats) for kind in KINDS]
    med = {k: {m: float(np.median([r[m] for r in runs if r["kind"] == k])) for m in ("wall_s", "cpu_s", "peak_rss_mb")}
           for k in KINDS}
    same_front = len({r["front_hash"] for r in runs}) == 1
    summary = {"facts_before": before, "facts_after": facts(), "trials": args.trials, "runs": runs, "medians": med,
               "same_front_everywhere": same_front}
    from search_space.io import atomic_write_json, atomic_write_text

    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# Search time by storage ({before['date']}, {before['machine']}, load {before['load_average_1m']} -> "
             f"{summary['facts_after']['load_average_1m']})", "",
             f"`PYTHONPATH=. python experiments/bench_search_storage.py --trials {args.trials} --repeats {args.repeats}"
             + (f" --predictor {args.predictor}`" if args.predictor else "`"),
             "", f"Setting: {runs[0]['setting']}. NSGA-II, seed 0, one budget. Medians of {args.repeats} interleaved "
             "runs, each in a fresh process.", "",
             "| storage | wall s | CPU s | wall / memory | peak RSS MB | journal MB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for k in KINDS:
        mb = next(r["journal_mb"] for r in runs if r["kind"] == k)
        lines.append(f"| {k} | {med[k]['wall_s']:.2f} | {med[k]['cpu_s']:.2f} | "
                     f"{med[k]['wall_s'] / med['memory']['wall_s']:.2f}x | {med[k]['peak_rss_mb']:.0f} | {mb} |")
    lines += ["", f"Same Pareto front (parameters of the best trials) from every run: {'yes' if same_front else 'NO'}."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
