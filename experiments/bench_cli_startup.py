"""Start-up time of the light commands and of the torch-free core, against a baseline commit.

Each command runs ``--repeats`` times in a fresh interpreter (subprocess wall time and the child's
CPU time), alternating between this tree and the baseline tree so that both see the same load;
one more run per command under ``-X importtime`` records whether it imported torch. The
baseline tree is ``git archive BASELINE`` unpacked into a temporary folder (or ``--baseline-dir``).

    PYTHONPATH=. python experiments/bench_cli_startup.py --repeats 7 --baseline 8815f6b

Writes experiments/results/cli/cli_startup.{json,md}.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from search_space.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "cli"
SMALLEST_CIFAR = "r32/w0.5:pc3e2/w0.5:pc3e2/w0.5:pc3e2/w0.5:pc3e2"
# name -> interpreter arguments; the shown table is one measured on another machine (the H200).
COMMANDS = {
    "hwnas --help": ["-m", "hwnas", "--help"],
    "hwnas latency query": ["-m", "hwnas", "latency", "query", "--table", "cifar_cpu_ort_b1_fp32", SMALLEST_CIFAR],
    "hwnas latency list": ["-m", "hwnas", "latency", "list"],
    "hwnas latency show": ["-m", "hwnas", "latency", "show", "cifar_h200_cuda_b256_bf16"],
    "hwnas space show": ["-m", "hwnas", "space", "show"],
    "import search, latency_tables": ["-c", "import search, latency_tables"],
    # The floor of every command that reads a table or a space (numpy is a core dependency).
    "python -c 'import numpy' (floor)": ["-c", "import numpy"],
}
TARGET_S = 0.5


def baseline_tree(commit: str) -> Path:
    """``commit`` of this repository unpacked into a temporary folder (no worktree metadata)."""
    out = Path(tempfile.mkdtemp(prefix=f"hwnas_{commit}_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def run_once(tree: Path, args: list[str], importtime: bool = False) -> tuple[float, float, str]:
    """Wall and CPU seconds of one run of ``python ARGS`` in ``tree``, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    extra = ["-X", "importtime"] if importtime else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *extra, *args], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: python {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stderr


def imports_torch(stderr: str) -> bool:
    """Whether a ``-X importtime`` log shows the top-level torch package imported."""
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in stderr.splitlines())


def machine() -> dict:
    """What the numbers depend on: CPU, cores, load, Python."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu_model": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed runs per command and tree (default 7)")
    p.add_argument("--baseline", default="8815f6b", help="baseline commit (default 8815f6b, before issue 19)")
    p.add_argument("--baseline-dir", type=Path, default=None, help="an unpacked baseline tree instead of git archive")
    p.add_argument("--out", type=Path, default=RESULTS / "cli_startup", help="output stem (.json and .md)")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats} is invalid; expected an integer >= 1")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    trees = {"baseline": args.baseline_dir or baseline_tree(args.baseline), "new": ROOT}
    facts = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine_before": machine(),
             "baseline": args.baseline, "new": head, "repeats": args.repeats, "target_s": TARGET_S}
    rows = {}
    for name, cmd in COMMANDS.items():
        for tree in trees.values():  # warm the file cache and __pycache__ once, untimed
            run_once(tree, cmd)
        runs = {k: {"wall_s": [], "cpu_s": []} for k in trees}
        for _ in range(args.repeats):
            for k, tree in trees.items():
                wall, cpu, _ = run_once(tree, cmd)
                runs[k]["wall_s"].append(round(wall, 4))
                runs[k]["cpu_s"].append(round(cpu, 4))
        row = {}
        for k, tree in trees.items():
            row[k] = {**runs[k], "median_wall_s": statistics.median(runs[k]["wall_s"]),
                      "median_cpu_s": statistics.median(runs[k]["cpu_s"]),
                      "imports_torch": imports_torch(run_once(tree, cmd, importtime=True)[2])}
        row["speedup_wall"] = row["baseline"]["median_wall_s"] / row["new"]["median_wall_s"]
        row["target_met"] = row["new"]["median_wall_s"] <= TARGET_S
        rows[name] = row
        print(f"{name:32s} baseline {row['baseline']['median_wall_s']:6.3f} s  new {row['new']['median_wall_s']:6.3f} s"
              f"  x{row['speedup_wall']:.1f}  torch {row['baseline']['imports_torch']}->{row['new']['imports_torch']}")
    facts["machine_after"] = machine()
    result = {**facts, "commands": rows}
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), report(result))
    print(f"-> {args.out.with_suffix('.md')}")


def report(r: dict) -> str:
    """The markdown summary of a result."""
    m0, m1 = r["machine_before"], r["machine_after"]
    lines = [
        "# CLI start-up: the light commands and the torch-free core", "",
        f"{r['date']}, {m0['cpu_model']} ({m0['cpu_cores']} cores), Python {m0['python']}; load average "
        f"{m0['load_average_1min']} before, {m1['load_average_1min']} after (the machine is shared: the "
        "two trees alternate run by run, so both see the same load). Median of "
        f"{r['repeats']} runs per command, subprocess wall time (CPU time beside it); baseline {r['baseline']} "
        f"(before issue 19), new {r['new']}. Target: <= {r['target_s']} s wall.", "",
        "Command: `PYTHONPATH=. python experiments/bench_cli_startup.py --repeats "
        f"{r['repeats']} --baseline {r['baseline']}`", "",
        "| command | baseline wall s | new wall s | speed-up | baseline CPU s | new CPU s | torch imported (base -> new) | target |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, row in r["commands"].items():
        b, n = row["baseline"], row["new"]
        lines.append(f"| `{name}` | {b['median_wall_s']:.3f} | {n['median_wall_s']:.3f} | {row['speedup_wall']:.1f}x | "
                     f"{b['median_cpu_s']:.3f} | {n['median_cpu_s']:.3f} | {b['imports_torch']} -> {n['imports_torch']} "
                     f"| {'met' if row['target_met'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
