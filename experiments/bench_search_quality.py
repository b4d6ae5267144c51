"""Search quality: hypervolume of each device's front (accuracy vs that device's latency) as a
share of the front of 1,000,000 uniformly random architectures scored the same way.
Target: NSGA-II >= 99% at 20,000 trials. NSGA-II, random search and TPE at equal trials, 5 seeds.

TPE's cost per trial grows with the number of trials (it refits its density models on all of
them), so the three-way comparison runs at ``--small`` trials (default 2,000) and NSGA-II
against random search also at ``--trials`` (default 20,000). The reference is resumable
(saved after every chunk) and reused while the setting is unchanged.

    python experiments/bench_search_quality.py [--trials 20000] [--small 2000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_search_common import (RESULTS, Clock, add_setting_args, facts, load_setting, peak_rss_mb,  # noqa: E402
                                 resolve_tables)

CHUNK = 20_000


def reference_fronts(space, objectives, devices, n: int, state_path: Path, setting: str) -> dict:
    """Per device: the front of ``n`` random archs, the worst accuracy and the worst latency seen."""
    from search import pareto_front_2d, score_batch
    from search_space.io import atomic_write_json

    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("setting") != setting or state.get("n_target") != n:
        state = {"setting": setting, "n_target": n, "n_done": 0,
                 "devices": {d: {"front": [], "min_acc": None, "max_lat": None} for d in devices}}
    rng = np.random.default_rng(1_000_003 + state["n_done"])  # chunks resume with fresh, reproducible draws
    bar = tqdm(total=n, initial=state["n_done"], desc="reference (random archs)", unit="arch")
    while state["n_done"] < n:
        k = min(CHUNK, n - state["n_done"])
        archs = [space.sample(rng) for _ in range(k)]
        values = score_batch(objectives, archs)
        acc = values[:, 0]
        for j, d in enumerate(devices, start=1):
            ref = state["devices"][d]
            old = np.asarray(ref["front"], float).reshape(-1, 2)
            q = np.concatenate([old[:, 0], acc])
            c = np.concatenate([old[:, 1], values[:, j]])
            keep = pareto_front_2d(q, c)
            ref["front"] = np.stack([q[keep], c[keep]], 1).tolist()
            ref["min_acc"] = float(min(acc.min(), ref["min_acc"] if ref["min_acc"] is not None else np.inf))
            ref["max_lat"] = float(max(values[:, j].max(), ref["max_lat"] if ref["max_lat"] is not None else -np.inf))
        state["n_done"] += k
        rng = np.random.default_rng(1_000_003 + state["n_done"])
        atomic_write_json(state_path, state)
        bar.update(k)
    bar.close()
    return state


def hv_at(trials, device: str, ref: dict, counts) -> list[float]:
    """Hypervolume of the first ``count`` trials' front, for each count."""
    from search import hypervolume_2d

    q, c = trials.column("accuracy"), trials.column(f"latency:{device}")
    return [hypervolume_2d(q[:k], c[:k], ref["min_acc"], ref["max_lat"]) for k in counts]


def main() -> None:
    """Reference front, runs of every sampler and seed, write search_quality.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--small", type=int, default=2_000, help="trials of the comparison that includes TPE")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--reference", type=int, default=1_000_000, help="random archs of the reference front")
    ap.add_argument("--out", default=str(RESULTS / "search" / "search_quality"))
    add_setting_args(ap)
    args = ap.parse_args()

    import optuna

    from search import Trials, predicted_accuracy, run_search, table_latency
    from search_space import SearchSpace
    from search_space.io import atomic_write_json, atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = facts()
    space = SearchSpace.from_config("cifar")
    args.table = resolve_tables(args, space)
    predictor, tables, setting = load_setting(args, space, Path(tempfile.mkdtemp()), min_devices=3)
    devices = list(tables)
    objectives = [predicted_accuracy(predictor, space)] + [table_latency(t, d) for d, t in tables.items()]
    out = Path(args.out)
    with Clock() as ref_clock:
        ref = reference_fronts(space, objectives, devices, args.reference, out.with_name(out.name + "_reference.json"), setting)
    from search import hypervolume_2d

    ref_hv = {d: hypervolume_2d(*np.asarray(ref["devices"][d]["front"]).T, ref["devices"][d]["min_acc"],
                                ref["devices"][d]["max_lat"]) for d in devices}
    plan = [("nsga2", args.trials), ("random", args.trials), ("tpe", args.small)]
    counts = sorted({args.small, *(c for c in (5_000, 10_000) if c < args.trials), args.trials})
    runs = []
    for sampler, n in plan:
        for seed in range(args.seeds):
            with Clock() as clock:
                study = run_search(space, objectives, n, sampler=sampler, seed=seed, progress=False)
            trials = Trials.from_study(study)
            at = [k for k in counts if k <= n]
            ratios = {d: dict(zip(map(str, at), (round(h / ref_hv[d], 5) for h in hv_at(trials, d, ref["devices"][d], at))))
                      for d in devices}
            runs.append({"sampler": sampler, "seed": seed, "trials": n, "wall_s": round(clock.wall, 1),
                         "cpu_s": round(clock.cpu, 1), "hv_ratio": ratios})
            print(json.dumps(runs[-1]), flush=True)
            del study, trials
    table = {}
    for sampler, n in plan:
        for k in counts:
            if k > n:
                continue
            for d in devices:
                r = [x["hv_ratio"][d][str(k)] for x in runs if x["sampler"] == sampler]
                table[(sampler, k, d)] = (float(np.mean(r)), float(np.std(r)), float(np.min(r)))
    summary = {"facts_before": before, "facts_after": facts(), "setting": setting, "reference": {
        "archs": ref["n_done"], "hypervolume": ref_hv, "front_sizes": {d: len(ref["devices"][d]["front"]) for d in devices},
        "reference_point": {d: [ref["devices"][d]["min_acc"], ref["devices"][d]["max_lat"]] for d in devices},
        "cpu_s_this_run": round(ref_clock.cpu, 1)}, "runs": runs, "peak_rss_mb": round(peak_rss_mb(), 1),
        "mean_std_min": {f"{s}@{k}:{d}": v for (s, k, d), v in table.items()}}
    atomic_write_json(out.with_suffix(".json"), summary)
    target = [table[("nsga2", args.trials, d)][2] for d in devices]
    lines = [f"# Search quality ({before['date']}, {before['machine']}, load {before['load_average_1m']})", "",
             f"`python experiments/bench_search_quality.py --trials {args.trials} --small {args.small} --seeds {args.seeds} "
             f"--reference {args.reference}`", "", f"Setting: {setting}.", "",
             f"Hypervolume per device (accuracy vs latency, reference point = worst accuracy and worst latency among "
             f"the {ref['n_done']:,} random archs) as a share of the reference front's; mean ± sd (min) over "
             f"{args.seeds} seeds. Peak RSS {summary['peak_rss_mb']} MB.", "",
             "| sampler | trials | " + " | ".join(devices) + " |", "| --- | --- | " + " | ".join("---" for _ in devices) + " |"]
    for sampler, n in plan:
        for k in counts:
            if k <= n:
                cells = [f"{100 * table[(sampler, k, d)][0]:.2f}% ± {100 * table[(sampler, k, d)][1]:.2f} "
                         f"({100 * table[(sampler, k, d)][2]:.2f}%)" for d in devices]
                lines.append(f"| {sampler} | {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Target NSGA-II >= 99% at {args.trials} trials on every device: worst seed "
              f"{100 * min(target):.2f}% -> {'met' if min(target) >= 0.99 else 'MISSED'}.", "",
              "Mean CPU seconds per run: " + ", ".join(
                  f"{s}@{n}: {np.mean([x['cpu_s'] for x in runs if x['sampler'] == s]):.1f}" for s, n in plan)]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
