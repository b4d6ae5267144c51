"""Validation of a shipped ONNX Runtime table: nets exported once (in parallel) vs once per pass.

Issue 19 asks for a latency stage of minutes. Preparing an ORT net (its ONNX export) took longer
than timing it, and every one of the three passes re-exported every net. This benchmark validates
the same table on the same subnets both ways, in separate processes (peak RSS per mode), in
alternating order, and reports the median wall time of each, their ratio, and how well the two
modes' measured latencies agree (so the faster path measures the same thing).

    python experiments/bench_latency_validation.py --table cifar_pool_cpu_ort_b1_fp32 --n 40 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "latency"
MODES = ("per_pass", "once")


def one(table_name: str, n: int, passes: int, mode: str, seed: int) -> dict:
    """Validate ``table_name`` once in this process (``mode``: per_pass re-exports in every pass)."""
    from latency_tables import LatencyTable, measure, validate_table

    if mode == "per_pass":
        measure.supports_artifacts = lambda backend: False  # the old path: prepare() exports in each pass
    table = LatencyTable.load(table_name, check_machine=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        validate_table(table, n=n, seed=seed, out_dir=tmp, passes=passes, save_table=False)
        seconds = time.perf_counter() - t0
        name = next(Path(tmp).glob("*.csv"))
        import csv

        rows = list(csv.DictReader(name.open()))
    return {"mode": mode, "seconds": round(seconds, 2), "measured_ms": {r["arch"]: float(r["measured_ms"]) for r in rows},
            "peak_rss_mib": round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write ``latency_validation_speed.{json,md}``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="cifar_pool_cpu_ort_b1_fp32", help="a shipped ORT table name or file")
    p.add_argument("--n", type=int, default=40, help="validation subnets (default 40)")
    p.add_argument("--passes", type=int, default=3, help="passes (default 3, the validation default)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating (default 3)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=str(OUT), help="results folder")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child run
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.table, args.n, args.passes, args.one, args.seed)))
        return 0
    runs = []
    for r in range(args.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            cmd = [sys.executable, __file__, "--one", mode, "--table", args.table, "--n", str(args.n),
                   "--passes", str(args.passes), "--seed", str(args.seed)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"repeat {r + 1}/{args.repeats} {mode}: {runs[-1]['seconds']} s, peak RSS {runs[-1]['peak_rss_mib']} MiB",
                  file=sys.stderr, flush=True)
    med = {m: statistics.median(x["seconds"] for x in runs if x["mode"] == m) for m in MODES}
    rss = {m: max(x["peak_rss_mib"] for x in runs if x["mode"] == m) for m in MODES}
    # agreement: each arch's median over repeats in one mode against the other's
    archs = sorted(runs[0]["measured_ms"])
    per = {m: {a: statistics.median(x["measured_ms"][a] for x in runs if x["mode"] == m) for a in archs} for m in MODES}
    ratios = sorted(per["once"][a] / per["per_pass"][a] for a in archs)
    within10 = sum(abs(q - 1) <= 0.10 for q in ratios) / len(ratios)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              "table": args.table, "n": args.n, "passes": args.passes, "repeats": args.repeats,
              "median_seconds": med, "ratio_once_to_per_pass": round(med["once"] / med["per_pass"], 3),
              "peak_rss_mib": rss, "latency_ratio_median": round(statistics.median(ratios), 4),
              "latency_within_10pct": round(within10, 3), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from search_space.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "latency_validation_speed.json", result)
    atomic_write_text(out / "latency_validation_speed.md", "\n".join([
        "# Validating an ORT latency table: nets exported once vs once per pass", "",
        f"{result['date']}, `{result['command']}`, {result['machine']}.", "",
        f"Table `{args.table}`, {args.n} subnets, {args.passes} passes, {args.repeats} runs of each mode (alternating).", "",
        "| mode | median wall (s) | peak RSS (MiB) |", "| --- | ---: | ---: |",
        f"| exported in every pass (before) | {med['per_pass']:.1f} | {rss['per_pass']} |",
        f"| exported once, before the passes (now) | {med['once']:.1f} | {rss['once']} |", "",
        f"Ratio now / before: **{result['ratio_once_to_per_pass']}**. Measured latencies, now vs before (per-arch "
        f"medians): median ratio {result['latency_ratio_median']}, {100 * within10:.0f}% within +-10%.", ""]))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
