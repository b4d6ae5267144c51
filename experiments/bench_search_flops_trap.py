"""The FLOPs trap: search with FLOPs as the cost, then look at what that front costs on each
device, against the front searched with the device's own latency table. Reported per device:
the accuracy the FLOPs front loses at equal latency (best accuracy within a latency limit, over
the latency range both fronts cover), with latencies from the table and, on a device reachable
from here, re-measured end to end for points spread along both fronts.

Runs on real tables only (``--table NAME=PATH`` or the complete shipped ones); ``--stand-ins``
exercises the script on the stand-in tables of ``bench_search_common`` (not a result).

    python experiments/bench_search_flops_trap.py [--trials 20000] [--seeds 3] [--measure 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_search_common import (RESULTS, Clock, add_setting_args, facts, load_setting, peak_rss_mb,  # noqa: E402
                                 resolve_tables)


def best_within(q: np.ndarray, c: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Best accuracy among points with latency <= each limit (nan where none fits)."""
    order = np.argsort(c)
    best = np.maximum.accumulate(q[order])
    idx = np.searchsorted(c[order], limits, side="right") - 1
    return np.where(idx >= 0, best[np.clip(idx, 0, None)], np.nan)


def accuracy_gap(table_front: tuple, flops_front: tuple, n_grid: int = 200) -> dict:
    """Accuracy of the table front minus the FLOPs front at equal latency, over the shared range."""
    (qt, ct), (qf, cf) = table_front, flops_front
    lo, hi = max(ct.min(), cf.min()), min(ct.max(), cf.max())
    if not hi > lo:
        return {"range_ms": None}
    grid = np.linspace(lo, hi, n_grid)
    gap = best_within(qt, ct, grid) - best_within(qf, cf, grid)
    quarter = {f"at_{p}pct_ms": round(float(np.interp(p / 100, np.linspace(0, 1, n_grid), gap)), 5) for p in (25, 50, 75)}
    return {"range_ms": [round(float(lo), 4), round(float(hi), 4)], "mean": round(float(np.nanmean(gap)), 5),
            "max": round(float(np.nanmax(gap)), 5), **quarter}


def main() -> None:
    """Search each device with FLOPs and with its table, compare, write search_flops_trap.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--measure", type=int, default=12, help="points per front re-measured on a local device (0: none)")
    ap.add_argument("--stand-ins", action="store_true", help="run on stand-in tables (exercises the script only)")
    ap.add_argument("--out", default=str(RESULTS / "search" / "search_flops_trap"))
    add_setting_args(ap)
    args = ap.parse_args()

    import optuna

    from search import (Trials, device_fronts, flops_objective, measured_latency, predicted_accuracy, run_search,
                        table_latency)
    from search._verify import spread_candidates
    from search_space import SearchSpace
    from search_space.io import atomic_write_json, atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_config("cifar")
    args.table = resolve_tables(args, space)
    if not args.table and not args.stand_ins:
        sys.exit("no complete latency table of the cifar space is shipped yet: pass --table NAME=PATH "
                 "(or --stand-ins to exercise the script)")
    before = facts()
    predictor, tables, setting = load_setting(args, space, Path(tempfile.mkdtemp()), min_devices=3 if args.stand_ins else 1)
    acc = predicted_accuracy(predictor, space)
    flops = flops_objective(space)
    rows = []
    for device, table in tables.items():
        lat = table_latency(table, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local = not table.check_machine() and not args.stand_ins  # stand-ins describe no real device
        for seed in range(args.seeds):
            with Clock() as clock:
                by_table = Trials.from_study(run_search(space, [acc, lat], args.trials, seed=seed, progress=False,
                                                        study_name=f"table-{device}-{seed}"))
                by_flops = Trials.from_study(run_search(space, [acc, flops], args.trials, seed=seed, progress=False,
                                                        study_name=f"flops-{device}-{seed}"))
            f_table = device_fronts(by_table, space)[device]
            f_flops = device_fronts(by_flops, space)["flops"]
            flops_archs = [p.arch for p in f_flops.points]
            qt = np.asarray([p.predicted["accuracy"] for p in f_table.points])
            ct = np.asarray([p.predicted[lat.name] for p in f_table.points])
            qf = np.asarray([p.predicted["accuracy"] for p in f_flops.points])
            cf = lat(flops_archs)  # the FLOPs front, re-scored by the device's table
            row = {"device": device, "seed": seed, "trials": args.trials, "cpu_s": round(clock.cpu, 1),
                   "front_sizes": {"table": len(qt), "flops": len(qf)},
                   "gap_by_table": accuracy_gap((qt, ct), (qf, cf))}
            if local and args.measure:
                meas = measured_latency(table, space, device)
                it, jf = spread_candidates(len(qt), args.measure), spread_candidates(len(qf), args.measure)
                mt = meas([f_table.points[i].arch for i in it])
                mf = meas([flops_archs[j] for j in jf])
                row["gap_measured"] = accuracy_gap((qt[it], mt), (qf[jf], mf))
                row["measured_points"] = {"table": len(it), "flops": len(jf)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"facts_before": before, "facts_after": facts(), "setting": setting, "stand_ins": args.stand_ins,
               "rows": rows, "peak_rss_mb": round(peak_rss_mb(), 1)}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# The FLOPs trap ({before['date']}, {before['machine']})", "",
             f"`python experiments/bench_search_flops_trap.py --trials {args.trials} --seeds {args.seeds} --measure {args.measure}"
             f"{' --stand-ins' if args.stand_ins else ''}`", "", f"Setting: {setting}.",
             *(["", "**Stand-in tables: this exercises the script; these are not results.**"] if args.stand_ins else []), "",
             "Accuracy (predicted, points) the FLOPs-searched front loses against the table-searched front at equal "
             "latency, over the latency range both cover; mean over seeds.", "",
             "| device | latency from | mean gap | max gap | gap at 25% / 50% / 75% of range |", "| --- | --- | --- | --- | --- |"]
    for device in tables:
        for key, label in (("gap_by_table", "table"), ("gap_measured", "measured")):
            g = [r[key] for r in rows if r["device"] == device and key in r and r[key].get("range_ms")]
            if g:
                m = lambda k: 100 * np.mean([x[k] for x in g])
                lines.append(f"| {device} | {label} | {m('mean'):.2f} | {m('max'):.2f} | "
                             f"{m('at_25pct_ms'):.2f} / {m('at_50pct_ms'):.2f} / {m('at_75pct_ms'):.2f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
