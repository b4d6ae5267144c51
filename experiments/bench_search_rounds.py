"""Search rounds against random sampling and direct NSGA-II, on a fully measured dataset as the
ground truth; no GPU needed.

The universe is the committed accuracy dataset (default: the 4,659 ``cifar_pool`` subnets of
``experiments/results/supernet_cifar/cifar_pool_recipe/predictor_cifar_dataset.jsonl``), accuracy its measured
value and latency the shipped table of the same space (default ``cifar_pool_cpu_ort_b1_fp32``).
Every strategy searches the real space through :class:`DatasetSpace`, whose ``suggest`` maps a
proposed arch to the nearest measured one (by encoding), so a GA or a predictor still works on
the space's genes while every point it asks for has a true value. A *query* is one distinct
architecture whose accuracy is looked up.

Strategies, each with ``--queries`` (200) and ``--seeds`` (10) seeds:
- ``random``: that many distinct dataset subnets drawn uniformly (the dataset is itself spread
  over FLOPs and block mixes, so this is spread sampling, a strong baseline);
- ``random_space``: random search through the space (``run_search`` with a random sampler,
  each proposal mapped to its nearest measured subnet), as a user would run it;
- ``nsga2_old`` / ``nsga2_new``: ``run_search`` on the true objectives with the old fixed
  population of 100 / the population sized to the budget (``search.make_sampler``), until
  ``--queries`` and ``--long-queries`` (500) distinct subnets are measured
  (``max_evaluations``: a re-proposed subnet is answered from the study's cache, no query);
- ``rounds``: ``search.search_rounds`` with ``--inner-trials`` predicted trials per round.

The markdown ends with the checks: rounds against the 0.97 target, and direct NSGA-II against
both random baselines at the same number of queries (difference of means and its 2 standard errors).

Scores per device: hypervolume of the measured points' front over the true front's (same
reference point: the dataset's worst accuracy and largest latency), and front recall (share of
the true front's subnets measured). Writes ``search_rounds.json``/``.md``/``.png`` to
``experiments/results/search``::

    nice -n 5 python experiments/bench_search_rounds.py            # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench_search_common import RESULTS, facts  # noqa: E402
from search import (Objective, hypervolume_2d, make_sampler, pareto_front_2d, run_search,  # noqa: E402
                    search_rounds, space_extremes, table_latency)
from search._rounds import DEFAULT_INNER_TRIALS, DEFAULT_LOCAL_SHARE, DEFAULT_PICK, DEFAULT_ROUNDS, PICKS  # noqa: E402
from search_space.io import atomic_write_json, atomic_write_text, save_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = RESULTS / "supernet_cifar" / "cifar_pool_recipe" / "predictor_cifar_dataset.jsonl"
DEFAULT_TABLES = [ROOT / "latency_tables" / "tables" / "cifar_pool_cpu_ort_b1_fp32.json"]


class DatasetSpace:
    """The real space's genes, restricted to the measured subnets: ``suggest`` and
    ``from_params`` return the measured subnet nearest (by encoding) to the proposed one.
    Everything else (encoding, FLOPs, config for the predictor features) is the real space's."""

    def __init__(self, base, archs):
        self.base, self.archs = base, list(archs)
        self.name, self.fingerprint = f"{base.name}-measured", f"{base.fingerprint}-measured{len(self.archs)}"
        self.index = {str(a): a for a in self.archs}
        self.X = base.encode_many(self.archs).astype(np.float64)
        self._nearest: dict = {}

    def __getattr__(self, name):  # config, layer_options, encoding_size, flops, ...: the real space's
        return getattr(self.base, name)

    def project(self, arch):
        """The measured subnet nearest to ``arch`` (itself when measured)."""
        key = str(arch)
        if key in self.index:
            return self.index[key]
        if key not in self._nearest:
            d = ((self.X - self.base.encode(arch)[None, :]) ** 2).sum(1)
            self._nearest[key] = self.archs[int(d.argmin())]
        return self._nearest[key]

    def suggest(self, trial):
        """The measured subnet nearest to the real space's suggestion."""
        return self.project(self.base.suggest(trial))

    def from_params(self, params):
        """As :meth:`suggest`, from stored parameters."""
        return self.project(self.base.from_params(params))

    def mutate(self, arch, rng=None, prob=0.1):
        """The real space's mutant, projected."""
        return self.project(self.base.mutate(arch, rng, prob))

    def encode_many(self, archs):
        """The real space's encoding."""
        return self.base.encode_many(archs)

    def extremes(self):
        """The real space's extremes (largest, smallest, largest per block type), projected."""
        return [self.project(a) for a in space_extremes(self.base)]

    def sample_spread(self, n, rng):
        """The real space's spread sample, projected (distinct)."""
        from predictors import sample_archs_spread

        out = {}
        for a in sample_archs_spread(self.base, 2 * n, rng):
            p = self.project(a)
            out.setdefault(str(p), p)
        return list(out.values())[:n]


class Lookup:
    """Measured accuracy of dataset subnets; counts distinct lookups (the queries)."""

    def __init__(self, accuracy: dict):
        self.accuracy, self.seen = accuracy, set()

    def __call__(self, archs):
        self.seen.update(str(a) for a in archs)
        return [self.accuracy[str(a)] for a in archs]


def load_universe(datasets: list[Path], tables: list[Path]):
    """(space over the measured subnets of ``datasets`` (one space), accuracy by arch string, tables by device)."""
    from latency_tables import FingerprintWarning, LatencyTable
    from predictors import AccuracyDataset

    loaded_data = [AccuracyDataset.load(d) for d in datasets]
    base = loaded_data[0].space()
    accuracy = {}
    for path, data in zip(datasets, loaded_data):
        if data.space().fingerprint != base.fingerprint:
            raise SystemExit(f"bench_search_rounds: {path}: another space than {datasets[0]}")
        accuracy.update({str(a): float(y) for a, y in zip(data.archs(base), data.accuracies())})
    archs = [base.parse(a) for a in accuracy]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FingerprintWarning)
        loaded = [LatencyTable.load(t, space=base) for t in tables]
    devices = [t.device for t in loaded]
    if len(set(devices)) < len(devices):  # two tables of one device label: name them by file
        devices = [Path(p).stem for p in tables]
    return DatasetSpace(base, archs), accuracy, dict(zip(devices, loaded))


NADIR_MARGIN = 0.1


def true_front(q: np.ndarray, c: np.ndarray, keys: list[str]) -> dict:
    """The true front of one device and its hypervolume from two reference points: ``ref`` the
    front's nadir moved out by 10% of the front's range on each axis (the usual choice, which
    weighs the front's own region), and ``ref_loose`` the dataset's worst accuracy and largest
    latency (so loose that random sampling scores near 1)."""
    idx = pareto_front_2d(q, c)
    fq, fc = q[idx], c[idx]
    ref = (float(fq.min() - NADIR_MARGIN * np.ptp(fq)), float(fc.max() + NADIR_MARGIN * np.ptp(fc)))
    loose = (float(q.min()), float(c.max()))
    return {"front": {keys[i] for i in idx}, "ref": ref, "hv": hypervolume_2d(q, c, *ref),
            "ref_loose": loose, "hv_loose": hypervolume_2d(q, c, *loose)}


def scores(measured: list[str], accuracy: dict, latency: dict, truth: dict) -> dict:
    """Per device: hypervolume ratios (both references) and front recall of the measured subnets."""
    out = {}
    q = np.asarray([accuracy[a] for a in measured])
    for device, t in truth.items():
        c = np.asarray([latency[device][a] for a in measured])
        out[device] = {"hv_ratio": hypervolume_2d(q, c, *t["ref"]) / t["hv"],
                       "hv_ratio_loose": hypervolume_2d(q, c, *t["ref_loose"]) / t["hv_loose"],
                       "recall": len(t["front"] & set(measured)) / len(t["front"])}
    return out


def run_random(space, queries, seed):
    """``queries`` distinct dataset subnets drawn uniformly."""
    rng = np.random.default_rng(seed)
    return [str(space.archs[i]) for i in rng.choice(len(space.archs), queries, replace=False)]


def run_nsga2(space, accuracy, tables, queries, seed, population, kind="nsga2"):
    """Direct search (NSGA-II, or random) on the true objectives until ``queries`` distinct
    subnets are measured (``run_search(max_evaluations=...)``); returns them."""
    lookup = Lookup(accuracy)
    objectives = ([Objective("accuracy", "maximize", lookup, measured=True, cache=True)]
                  + [table_latency(t, d) for d, t in tables.items()])
    sampler = make_sampler(kind, seed=seed, population_size=population, n_trials=queries)
    run_search(space, objectives, max_evaluations=queries, sampler=sampler, seed=seed, progress=False)
    assert len(lookup.seen) <= queries
    return sorted(lookup.seen)


def run_rounds(space, accuracy, tables, queries, seed, inner_trials, rounds, explore, predictor, seed_size,
               improve_share=0.0, bootstrap=False, pick=DEFAULT_PICK, local_share=DEFAULT_LOCAL_SHARE):
    """``search_rounds`` on the true accuracy; returns the measured subnets and its log."""
    lookup = Lookup(accuracy)
    measure = [Objective("accuracy", "maximize", lookup, measured=True, cache=True)]
    result = search_rounds(space, measure, [table_latency(t, d) for d, t in tables.items()], queries, seed=seed,
                           inner_trials=inner_trials, rounds=rounds, explore=explore, predictor=predictor,
                           seed_size=seed_size, improve_share=improve_share, bootstrap=bootstrap, pick=pick,
                           local_share=local_share)
    assert len(lookup.seen) == len(result) <= queries
    return [str(a) for a in result.archs], result.log


def main(argv=None) -> int:
    """Run the benchmark and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, action="append", default=None,
                   help="accuracy dataset (repeatable: one universe of all their subnets; default: the 4,659 cifar_pool)")
    p.add_argument("--table", type=Path, action="append", default=None, help="latency table (repeatable)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--long-queries", type=int, default=500, help="a second, longer budget for direct NSGA-II")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (to split a run)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="write the union of these result files of split runs (same settings) instead of running")
    p.add_argument("--inner-trials", type=int, default=DEFAULT_INNER_TRIALS)
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--seed-size", type=int, default=None, help="subnets measured before the first fit (default: 30%%)")
    p.add_argument("--explore", type=float, default=1.0)
    p.add_argument("--predictor", default="gbt")
    p.add_argument("--bootstrap", action="store_true",
                   help="the GBT's members fitted on bootstrap resamples, a real std (search_rounds' bootstrap)")
    p.add_argument("--improve-share", type=float, default=0.0,
                   help="share of each batch picked by optimistic hypervolume improvement (search_rounds' improve_share)")
    p.add_argument("--pick", choices=PICKS, default=DEFAULT_PICK,
                   help="how each batch is picked from the candidates (search_rounds' pick)")
    p.add_argument("--local-share", type=float, default=DEFAULT_LOCAL_SHARE,
                   help="share of each batch taken from mutants of the most accurate measured subnets (local search; "
                        f"default {DEFAULT_LOCAL_SHARE})")
    p.add_argument("--strategies", default="random,random_space,nsga2_old,nsga2_new,rounds")
    p.add_argument("--out", default="search_rounds", help="result name under experiments/results/search")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    predictor = args.predictor
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.time()
    args.dataset = args.dataset or [DEFAULT_DATASET]
    space, accuracy, tables = load_universe(args.dataset, args.table or DEFAULT_TABLES)
    keys = [str(a) for a in space.archs]
    latency = {d: dict(zip(keys, t.predict_many(space.archs).tolist())) for d, t in tables.items()}
    q_all = np.asarray([accuracy[k] for k in keys])
    truth = {}
    for d in tables:
        truth[d] = true_front(q_all, np.asarray([latency[d][k] for k in keys]), keys)

    wanted = args.strategies.split(",")
    runs: dict[str, list] = {}
    logs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        todo = {}
        if "random" in wanted:
            todo["random"] = lambda: run_random(space, args.queries, seed)
            todo[f"random_{args.long_queries}"] = lambda: run_random(space, args.long_queries, seed)
        if "random_space" in wanted:
            for n in (args.queries, args.long_queries):
                todo[f"random_space_{n}"] = lambda n=n: run_nsga2(space, accuracy, tables, n, seed, None, "random")
        for name, pop in (("nsga2_old", 100), ("nsga2_new", None)):
            if name in wanted:
                for n in (args.queries, args.long_queries):
                    todo[f"{name}_{n}"] = lambda n=n, pop=pop: run_nsga2(space, accuracy, tables, n, seed, pop)
        if "rounds" in wanted:
            def rounds():
                measured, log = run_rounds(space, accuracy, tables, args.queries, seed, args.inner_trials, args.rounds,
                                           args.explore, predictor, args.seed_size, args.improve_share, args.bootstrap,
                                           args.pick, args.local_share)
                logs.append({"seed": seed, "rounds": log})
                return measured
            todo["rounds"] = rounds
        for name, fn in todo.items():
            t0 = time.process_time()
            measured = fn()
            row = {"seed": seed, "queries": len(measured), "cpu_s": round(time.process_time() - t0, 2),
                   "devices": scores(measured, accuracy, latency, truth)}
            runs.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: {row['queries']} queries, "
                  + ", ".join(f"{d}: hv {v['hv_ratio']:.3f} recall {v['recall']:.2f}" for d, v in row["devices"].items())
                  + f" ({row['cpu_s']} s CPU)", flush=True)
        _write(args, argv, space, keys, tables, truth, runs, logs, start)  # after every seed: a cut run keeps its seeds
    return 0


def merge(paths: list[Path], out_name: str) -> int:
    """Write one result of split runs' json files (same dataset, tables and settings but the seeds)."""
    import json

    docs = [json.loads(Path(p).read_text()) for p in paths]
    doc = docs[0]
    def same(a: dict, b: dict) -> bool:  # the settings both name, but the seeds and file names
        keys = (set(a) & set(b)) - {"seeds", "first_seed", "out", "merge"}
        return all(a[k] == b[k] for k in keys)

    for other in docs[1:]:
        if other["true_front"] != doc["true_front"] or not same(other["settings"], doc["settings"]):
            raise SystemExit(f"{other['command']!r} differs from {doc['command']!r} in more than its seeds: not merged")
        for name, rows in other["runs"].items():
            doc["runs"].setdefault(name, []).extend(rows)
        doc["rounds_logs"] += other["rounds_logs"]
    seeds = sorted({r["seed"] for rows in doc["runs"].values() for r in rows})
    doc["settings"]["seeds"], doc["settings"]["first_seed"] = len(seeds), seeds[0]
    doc["command"] = " + ".join(d["command"] for d in docs)
    doc["wall_s"] = round(sum(d["wall_s"] for d in docs), 1)
    devices = list(doc["true_front"])
    doc["summary"] = _summary(doc["runs"], devices)
    out = RESULTS / "search" / out_name
    atomic_write_json(out.with_suffix(".json"), doc)
    atomic_write_text(out.with_suffix(".md"), _markdown(doc))
    _plot(out.with_suffix(".png"), doc["summary"], doc["runs"], devices)
    print(f"merged {len(docs)} runs, seeds {seeds}: wrote {out}.json/.md/.png")
    return 0


def _write(args, argv, space, keys, tables, truth, runs, logs, start) -> None:
    """Write the json, markdown and plot of the seeds run so far."""
    summary = _summary(runs, list(tables))
    doc = {"facts": facts(), "command": "python experiments/bench_search_rounds.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "settings": {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
                        for k, v in vars(args).items()},
           "dataset": {"path": " + ".join(str(d.relative_to(ROOT) if d.is_absolute() else d) for d in args.dataset),
                       "subnets": len(keys), "space": space.base.name},
           "tables": {d: str(t.path) for d, t in tables.items()},
           "true_front": {d: {"reference": list(t["ref"]), "hypervolume": t["hv"], "reference_loose": list(t["ref_loose"]),
                              "hypervolume_loose": t["hv_loose"], "size": len(t["front"]),
                              "subnets": sorted(t["front"])} for d, t in truth.items()},
           "summary": summary, "runs": runs, "rounds_logs": logs, "wall_s": round(time.time() - start, 1)}
    out = RESULTS / "search" / args.out
    atomic_write_json(out.with_suffix(".json"), doc)
    atomic_write_text(out.with_suffix(".md"), _markdown(doc))
    _plot(out.with_suffix(".png"), summary, runs, list(tables))
    print(f"wrote {out}.json/.md/.png ({doc['wall_s']} s)")


def _summary(runs: dict, devices: list[str]) -> dict:
    out = {}
    for name, rows in runs.items():
        out[name] = {"queries_mean": float(np.mean([r["queries"] for r in rows])),
                     "cpu_s_mean": float(np.mean([r["cpu_s"] for r in rows]))}
        for d in devices:
            hv = np.asarray([r["devices"][d]["hv_ratio"] for r in rows])
            rec = np.asarray([r["devices"][d]["recall"] for r in rows])
            loose = np.asarray([r["devices"][d]["hv_ratio_loose"] for r in rows])
            out[name][d] = {"hv_mean": float(hv.mean()), "hv_sd": float(hv.std()), "hv_min": float(hv.min()),
                            "hv_loose_mean": float(loose.mean()), "recall_mean": float(rec.mean())}
    return out


def _markdown(doc: dict) -> str:
    f, s = doc["facts"], doc["settings"]
    devices = list(doc["true_front"])
    lines = [f"# Search rounds vs random sampling vs direct NSGA-II ({f['date']}, {f['machine']}, load {f['load_average_1m']})",
             "", f"`{doc['command']}` ({doc['wall_s']} s wall, niced, shared machine)", "",
             f"Ground truth: {doc['dataset']['subnets']} measured subnets of space `{doc['dataset']['space']}` "
             f"(`{doc['dataset']['path']}`), latency from " + ", ".join(f"`{Path(t).name}` ({d})" for d, t in doc["tables"].items())
             + ". True front: " + ", ".join(f"{d}: {t['size']} subnets" for d, t in doc["true_front"].items()) + ".",
             "", f"Seeds: {min(len(r) for r in doc['runs'].values())} of {s['seeds']} run. Rounds: {s['rounds']} rounds after a seed of {s['seed_size'] or '30% of the budget'}, "
             f"{s['inner_trials']} predicted trials per round, predictor `{s['predictor']}`"
             f"{' with bootstrap members' if s.get('bootstrap', 'no_bootstrap' in s and not s['no_bootstrap']) else ''}, "
             f"explore {s['explore']}, improve share {s.get('improve_share', 0.0)}, local share {s.get('local_share', 0.0)}, batch pick `{s.get('pick', 'layers')}`.", "",
             "| strategy | queries (mean) | " + " | ".join(f"{d}: HV ratio mean ± sd (min) | {d}: HV ratio, loose ref. | "
                                                          f"{d}: front recall" for d in devices)
             + " | CPU s |", "|" + " --- |" * (2 + 3 * len(devices) + 1)]
    for name, row in doc["summary"].items():
        cells = [f"{row[d]['hv_mean']:.3f} ± {row[d]['hv_sd']:.3f} ({row[d]['hv_min']:.3f}) | "
                 f"{row[d]['hv_loose_mean']:.3f} | {row[d]['recall_mean']:.2f}" for d in devices]
        lines.append(f"| {name} | {row['queries_mean']:.0f} | " + " | ".join(cells) + f" | {row['cpu_s_mean']:.1f} |")
    lines += ["", "HV ratio: hypervolume of the measured subnets' front over the true front's, from the true front's "
              "nadir moved out by 10% of its range on each axis; loose ref.: from the dataset's worst accuracy and "
              "largest latency instead (most of that area is covered by any sample). Front recall: share of the true front's subnets among the measured. "
              "`nsga2_old_N`: population 100 (the old default); `nsga2_new_N`: population sized to N "
              "(`search.budget_population`); both run until N distinct subnets are measured (`max_evaluations`; repeats are "
              "answered from the study's cache). "
              "CPU s: per seed, including the predictor fits and inner searches of `rounds`.", ""]
    return "\n".join(lines + _checks(doc, devices))


def _checks(doc: dict, devices: list[str]) -> list[str]:
    """Lines stating the targets: rounds >= 0.97 on every device; direct NSGA-II (new defaults)
    against random at the same query counts (clearly above: the difference of the means is
    more than two standard errors)."""
    runs, s = doc["runs"], doc["settings"]
    lines = ["## Checks (computed)", ""]
    if "rounds" in runs:
        for d in devices:
            m = doc["summary"]["rounds"][d]["hv_mean"]
            lines.append(f"- rounds, {d}: HV ratio {m:.3f} at {s['queries']} queries: "
                         + ("met" if m >= 0.97 else "**missed**") + " (target >= 0.97)")
    for n in (s["queries"], s["long_queries"]):
        ours = runs.get(f"nsga2_new_{n}")
        for base in ((f"random_{n}" if n != s["queries"] else "random"), f"random_space_{n}"):
            if ours is None or base not in runs:
                continue
            for d in devices:
                a = np.asarray([r["devices"][d]["hv_ratio"] for r in ours])
                b = np.asarray([r["devices"][d]["hv_ratio"] for r in runs[base]])
                diff = a.mean() - b.mean()
                se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if min(len(a), len(b)) > 1 else float("nan")
                verdict = "clearly above" if diff > 2 * se else "not clearly above"
                lines.append(f"- nsga2_new_{n} vs {base}, {d}: {a.mean():.3f} vs {b.mean():.3f} "
                             f"(difference {diff:+.3f}, 2 SE {2 * se:.3f}): {verdict}")
    return lines + [""]


def _plot(path: Path, summary: dict, runs: dict, devices: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(devices), figsize=((1.5 + 0.8 * len(runs)) * len(devices), 4.4), squeeze=False)
    names = list(runs)
    for ax, d in zip(axes[0], devices):
        for i, n in enumerate(names):
            hv = [r["devices"][d]["hv_ratio"] for r in runs[n]]
            ax.scatter(np.full(len(hv), i) + np.linspace(-0.15, 0.15, len(hv)), hv, s=10, alpha=0.6)
            ax.errorbar(i, np.mean(hv), yerr=np.std(hv), fmt="k_", ms=14, capsize=3)
        ax.axhline(0.97, c="tab:red", ls="--", lw=1, label="target 0.97")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("hypervolume / true front's")
        ax.set_title(f"{d}: measured front vs the true one")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
