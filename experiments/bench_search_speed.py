"""Search speed: trials of the cheap objectives (predicted accuracy + 3 table latencies, a
budget on one device) per second, in-memory storage, NSGA-II. Target: 20,000 trials in < 60 s.

Compared in the same run, each in its own process (own peak RSS):
- ``optuna_optimize``: the textbook way - stock ``NSGAIISampler`` and ``study.optimize`` with an
  objective scoring one architecture per trial;
- ``batched_stock_nsga2``: hwnas's batched ask/tell loop with the stock sampler;
- ``hwnas``: ``search.run_search`` (batched loop + incremental GA bookkeeping).
Where the time goes: CPU seconds inside the objectives (encode, predictor, tables) against the
rest (Optuna's ask/suggest/tell).

    python experiments/bench_search_speed.py [--trials 20000] [--baseline-trials 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_search_common import (RESULTS, Clock, add_setting_args, facts, load_setting, peak_rss_mb,  # noqa: E402
                                 resolve_tables)


class Timed:
    """Wraps an objective's score function, adding up the CPU seconds spent in it."""

    def __init__(self, fn, clock: dict, key: str):
        self.fn, self.clock, self.key = fn, clock, key

    def __call__(self, archs):
        t = time.process_time()
        try:
            return self.fn(archs)
        finally:
            self.clock[self.key] = self.clock.get(self.key, 0.0) + time.process_time() - t


def _setting(args):
    from search import predicted_accuracy, table_latency
    from search_space import SearchSpace

    space = SearchSpace.from_config("cifar")
    predictor, tables, desc = load_setting(args, space, Path(tempfile.mkdtemp()), min_devices=3)
    objectives = [predicted_accuracy(predictor, space)] + [table_latency(t, d) for d, t in tables.items()]
    first = next(iter(tables))
    rng = np.random.default_rng(123)
    budget = float(np.median(tables[first].predict_many([space.sample(rng) for _ in range(2000)])))
    return space, predictor, tables, objectives, (first, budget), desc


def run_config(name: str, n: int, args, queue) -> None:
    """One configuration, in a child process; puts its measurements on ``queue``."""
    import optuna

    from search import Budget, latency_name, run_search
    from search._samplers import DEFAULT_POPULATION

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, predictor, tables, objectives, (dev, budget), desc = _setting(args)
    spent: dict = {}
    timed = [dataclasses.replace(o, score=Timed(o.score, spent, o.name)) for o in objectives]
    budgets = [Budget(latency_name(dev), budget)]
    rss_before = peak_rss_mb()
    if name == "hwnas_profiled":
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(run_search, space, timed, n, budgets=budgets, seed=0, progress=False)
        queue.put({"config": name, "trials": n, "profile": where_time_goes(prof)})
        return
    with Clock() as clock:
        if name == "hwnas":
            run_search(space, timed, n, budgets=budgets, seed=0, progress=False)
        else:
            sampler = optuna.samplers.NSGAIISampler(population_size=DEFAULT_POPULATION, seed=0)
            study = optuna.create_study(directions=[o.direction for o in objectives], sampler=sampler)
            if name == "batched_stock_nsga2":
                from search._loop import optimize_batches

                optimize_batches(study, space, timed, budgets, n, DEFAULT_POPULATION)
            else:  # optuna_optimize: one arch per trial, as a plain Optuna objective
                def objective(trial):
                    """One architecture per trial, as Optuna's tutorials write it."""
                    arch = space.suggest(trial)
                    values = [float(o([arch])[0]) for o in timed]
                    trial.set_constraint(budgets[0].objective, values[1 + list(tables).index(dev)] - budget)
                    return values

                study.optimize(objective, n_trials=n)
    scoring = sum(spent.values())
    queue.put({"config": name, "trials": n, "wall_s": round(clock.wall, 2), "cpu_s": round(clock.cpu, 2),
               "trials_per_s_wall": round(n / clock.wall, 1), "trials_per_s_cpu": round(n / clock.cpu, 1),
               "objective_cpu_s": {k: round(v, 2) for k, v in spent.items()},
               "optuna_cpu_s": round(clock.cpu - scoring, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
               "rss_before_run_mb": round(rss_before, 1), "setting": desc, "budget": {dev: round(budget, 4)}})


# (label, file suffix, function): cumulative time under cProfile, as a share of the whole run.
PROFILE_PARTS = [
    ("Trial._suggest: all of suggest_categorical", "optuna/trial/_trial.py", "_suggest"),
    ("  distribution equality checks", "optuna/distributions.py", "check_distribution_compatibility"),
    ("  in-memory storage: set_trial_param", "optuna/storages/_in_memory.py", "set_trial_param"),
    ("  sampler: sample_relative (NSGA-II children)", "optuna/samplers/nsgaii/_sampler.py", "sample_relative"),
    ("  sampler: infer_relative_search_space", "search/_samplers.py", "infer_relative_search_space"),
    ("Study.tell (incl. returning a deep copy)", "optuna/study/study.py", "tell"),
    ("Trial.set_constraint", "optuna/trial/_trial.py", "set_constraint"),
    ("Study.ask", "optuna/study/study.py", "ask"),
    ("objectives (encode, predictor, tables)", "bench_search_speed.py", "__call__"),
]


def where_time_goes(prof) -> dict:
    """Shares of the profiled run's time spent in :data:`PROFILE_PARTS`."""
    import pstats

    stats = pstats.Stats(prof).stats
    total = max(ct for (_, _, fn), (_, _, _, ct, _) in stats.items() if fn == "run_search")
    out = {}
    for label, file, fn in PROFILE_PARTS:
        ct = sum(v[3] for (f, _, name), v in stats.items() if f.endswith(file) and name == fn)
        out[label] = round(ct / total, 3)
    return out


def _one_child(name: str, n: int, args) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=run_config, args=(name, n, args, q))
    p.start()
    while True:  # a child that dies (e.g. killed for memory) must not leave us waiting forever
        try:
            result = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"benchmark child {name!r} died with exit code {p.exitcode}") from None
    p.join()
    print(json.dumps(result), flush=True)
    return result


def in_child(name: str, n: int, args) -> dict:
    """``args.repeats`` fresh processes of one configuration; the medians of their measurements."""
    reps = [_one_child(name, n, args) for _ in range(args.repeats)]
    med = lambda key: round(float(np.median([r[key] for r in reps])), 2)
    result = dict(reps[0])
    for key in ("wall_s", "cpu_s", "trials_per_s_wall", "trials_per_s_cpu", "optuna_cpu_s", "peak_rss_mb"):
        result[key] = med(key)
    result["objective_cpu_s"] = {k: round(float(np.median([r["objective_cpu_s"][k] for r in reps])), 2)
                                 for k in reps[0]["objective_cpu_s"]}
    result["repeats"] = [{k: r[k] for k in ("wall_s", "cpu_s")} for r in reps]
    return result


def main() -> None:
    """Run every configuration, write search_speed.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--baseline-trials", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians are reported)")
    ap.add_argument("--out", default=str(RESULTS / "search" / "search_speed"))
    add_setting_args(ap)
    args = ap.parse_args()
    from search_space import SearchSpace

    args.table = resolve_tables(args, SearchSpace.from_config("cifar"))  # the same tables in every child
    before = facts()
    runs = [in_child(name, args.baseline_trials, args) for name in ("optuna_optimize", "batched_stock_nsga2", "hwnas")]
    runs.append(in_child("hwnas", args.trials, args))
    profile = _one_child("hwnas_profiled", args.baseline_trials, args)["profile"]
    base = runs[0]
    for r in runs[1:3]:
        r["speedup_vs_optuna_optimize_cpu"] = round(base["cpu_s"] / r["cpu_s"], 2)
        r["speedup_vs_optuna_optimize_wall"] = round(base["wall_s"] / r["wall_s"], 2)
    target = runs[-1]
    summary = {"facts_before": before, "facts_after": facts(), "runs": runs, "profile_shares": profile,
               "target": {"trials": args.trials, "limit_s": 60, "wall_s": target["wall_s"], "cpu_s": target["cpu_s"],
                          "met_wall": target["wall_s"] < 60, "met_cpu": target["cpu_s"] < 60}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from search_space.io import atomic_write_json, atomic_write_text

    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# Search speed ({before['date']}, {before['machine']}, load {before['load_average_1m']} -> "
             f"{summary['facts_after']['load_average_1m']})", "",
             f"`python experiments/bench_search_speed.py --trials {args.trials} --baseline-trials {args.baseline_trials} "
             f"--repeats {args.repeats}`", "",
             f"Setting: {runs[0]['setting']}. NSGA-II, population 100, in-memory storage, budget {runs[0]['budget']} ms.", "",
             f"Medians of {args.repeats} runs, each in a fresh process.", "",
             "| config | trials | wall s | CPU s | trials/s (CPU) | in objectives CPU s | Optuna CPU s | peak RSS MB | speed-up (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['config']} | {r['trials']} | {r['wall_s']} | {r['cpu_s']} | {r['trials_per_s_cpu']} | "
                     f"{round(sum(r['objective_cpu_s'].values()), 2)} | {r['optuna_cpu_s']} | {r['peak_rss_mb']} | "
                     f"{r.get('speedup_vs_optuna_optimize_cpu', '')} |")
    t = summary["target"]
    lines += ["", f"Target: {t['trials']} trials in < 60 s: wall {t['wall_s']} s ({'met' if t['met_wall'] else 'MISSED'}), "
              f"CPU {t['cpu_s']} s ({'met' if t['met_cpu'] else 'MISSED'}). The machine is shared: wall time includes "
              "waiting for the CPU, CPU time is what an idle machine would take.", "",
              "Per objective CPU seconds (hwnas, target run): " + json.dumps(target["objective_cpu_s"]), "",
              f"Where the time goes (hwnas, {args.baseline_trials} trials under cProfile, share of the run; "
              "indented rows are parts of the row above and may overlap each other):", "", "| part | share |", "| --- | --- |"]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in profile.items()]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
