"""`hwnas predictor fit --model auto` on 1,500 subnets: the old selection against the new, same run.

The fit set is the first ``--n`` subnets of a committed accuracy dataset and the held-out set the
next ``n // 3`` (as ``hwnas run`` measures ``predictor.archs`` and ``archs // 3`` more). Each run
is a fresh interpreter (so peak RSS is its own), alternating old and new so both see the same
load:

- old: the selection as it was before (5-fold Kendall tau over every kind, each fitted on its
  own, the blend included), then the winner fitted on all subnets;
- new: ``hwnas predictor fit --model auto`` as it is now (:func:`predictors.selection.select_kind`).

Wall time is from loading the dataset to the fitted predictor saved (what the command reports);
the held-out Kendall tau is of the selected model on the held-out subnets.

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/bench_predictor_auto.py --repeats 3

Writes experiments/results/predictor/predictor_auto_speed.{json,md}.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from search_space.io import atomic_write_json, atomic_write_text  # noqa: E402

DATA = ROOT / "experiments" / "results" / "supernet_cifar" / "cifar_pool_recipe" / "predictor_cifar_dataset.jsonl"
RESULTS = ROOT / "experiments" / "results" / "predictor"
TARGET_S, TAU_TOLERANCE = 60.0, 0.01


def split_files(data: Path, n: int, folder: Path) -> tuple[Path, Path]:
    """The fit set (first ``n`` records) and the held-out set (the next ``n // 3``) as files."""
    from predictors import AccuracyDataset

    full = AccuracyDataset.load(data)
    if len(full) < n + n // 3:
        raise SystemExit(f"--n {n}: {data} has {len(full)} subnets, expected at least {n + n // 3}")
    fit, hold = folder / "fit.jsonl", folder / "holdout.jsonl"
    AccuracyDataset(full.header, full.records[:n]).save(fit)
    AccuracyDataset(full.header, full.records[n:n + n // 3]).save(hold)
    return fit, hold


def old_fit(fit: Path, out: Path) -> None:
    """The selection before this change: 5-fold tau of every kind fitted on its own, then the winner."""
    from predictors import AccuracyDataset, PREDICTORS, make_predictor, select_predictor

    data = AccuracyDataset.load(fit)
    space = data.space()
    X, y = data.arrays(space)
    candidates = {kind: (lambda kind=kind: make_predictor(kind, space, seed=0)) for kind in sorted(PREDICTORS)}
    model, scores = select_predictor(X, y, candidates, k=5, seed=0)
    predictor = make_predictor(model, space, seed=0).fit(X, y)
    predictor.meta["selection_kendall_tau"] = scores
    predictor.save(out)


def worker(setting: str, fit: Path, hold: Path) -> dict:
    """One run of ``setting`` in this process: wall seconds, peak RSS, selected kind, scores, held-out tau."""
    import contextlib
    import io

    from hwnas.cli import main
    from predictors import AccuracyDataset, load_predictor, rank_metrics

    out = fit.with_name(f"{setting}.pt")
    start = time.perf_counter()
    if setting == "old":
        old_fit(fit, out)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            if main(["predictor", "fit", "--data", str(fit), "--model", "auto", "--out", str(out)]) != 0:
                raise SystemExit("hwnas predictor fit failed")
    wall = time.perf_counter() - start
    predictor = load_predictor(out)
    X, y = AccuracyDataset.load(hold).arrays(predictor.space)
    tau = rank_metrics(y, predictor.predict(X)[0])["kendall_tau"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": setting, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "kind": predictor.kind, "hparams": predictor.hparams,
        "selection_kendall_tau": predictor.meta.get("selection_kendall_tau"),
        "selection_folds_run": predictor.meta.get("selection_folds_run"), "holdout_kendall_tau": round(tau, 4),
        "load_average": os.getloadavg()}


def summarise(runs: list[dict]) -> dict:
    """Median wall time and peak RSS, and the held-out tau, of each setting."""
    out = {}
    for setting in ("old", "new"):
        rs = [r for r in runs if r["setting"] == setting]
        if rs:
            out[setting] = {"runs": len(rs), "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                            "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
                            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                            "kinds": sorted({r["kind"] for r in rs}),
                            "holdout_kendall_tau": statistics.median(r["holdout_kendall_tau"] for r in rs)}
    if "old" in out and "new" in out:
        out["targets"] = {"wall_s": TARGET_S, "tau_tolerance": TAU_TOLERANCE,
                          "wall_met": out["new"]["median_wall_s"] <= TARGET_S,
                          "tau_met": out["new"]["holdout_kendall_tau"] >= out["old"]["holdout_kendall_tau"] - TAU_TOLERANCE}
    return out


def render(result: dict) -> str:
    """The markdown write-up."""
    s, m = result["summary"], result["machine"]
    lines = [f"# `hwnas predictor fit --model auto`: old selection vs new ({result['date']})", "",
             f"- data: first {result['n']} subnets of `{result['data']}` to fit, the next {result['n'] // 3} held out",
             f"- command: `{result['command']}`",
             f"- machine: {m['description']}; {m['cpu']} ({m['cores']} cores), Python {m['python']}; "
             f"load average before {m['load_before']}, after {m['load_after']}", "",
             "Wall time depends on the other work on the shared cores; CPU time (user + system of the run's "
             "process, the whole interpreter included) much less.", "",
             "| setting | runs | median wall (s) | median CPU (s) | median peak RSS (MiB) | selected | held-out Kendall tau |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting in ("old", "new"):
        if setting in s:
            r = s[setting]
            lines.append(f"| {setting} | {r['runs']} | {r['median_wall_s']:.1f} | {r['median_cpu_s']:.1f} | "
                         f"{r['median_peak_rss_mib']:.0f} | "
                         f"{', '.join(r['kinds'])} | {r['holdout_kendall_tau']:.4f} |")
    if "targets" in s:
        t = s["targets"]
        lines += ["", f"Target wall <= {t['wall_s']:.0f} s: **{'met' if t['wall_met'] else 'MISSED'}**; held-out tau "
                  f"within {t['tau_tolerance']} of the old selection's: **{'met' if t['tau_met'] else 'MISSED'}**."]
    lines += ["", "## Runs", "", "| # | setting | wall (s) | CPU (s) | peak RSS (MiB) | selected | CV tau (folds run) | "
              "held-out tau | load after |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(result["runs"]):
        cv = ", ".join(f"{k} {v:.4f}" + (f" ({r['selection_folds_run'][k]})" if r.get("selection_folds_run") else "")
                       for k, v in (r["selection_kendall_tau"] or {}).items())
        lines.append(f"| {i + 1} | {r['setting']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['kind']} | {cv} | "
                     f"{r['holdout_kendall_tau']:.4f} | {r['load_average'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark (or, with ``--worker``, one run of it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="accuracy dataset (default: the cifar_pool one)")
    p.add_argument("--n", type=int, default=1500, help="subnets to fit on (default 1500)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting (default 3)")
    p.add_argument("--settings", default="new,old", help="comma-separated order within a repeat (default new,old)")
    p.add_argument("--machine", default="2-core VM, shared with other agents' work (loaded)",
                   help="how to describe the machine in the write-up")
    p.add_argument("--out", default="predictor_auto_speed", help="result file stem in experiments/results/predictor")
    p.add_argument("--worker", nargs=3, metavar=("SETTING", "FIT", "HOLD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="bench_predictor_auto_"))
    fit, hold = split_files(args.data, args.n, folder)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n": args.n,
              "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
              "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " PYTHONPATH=. python "
              "experiments/bench_predictor_auto.py " + " ".join(sys.argv[1:]),
              "machine": {"description": args.machine, "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "python": platform.python_version(),
                          "load_before": [round(x, 2) for x in os.getloadavg()]}, "runs": []}
    try:
        with open("/proc/cpuinfo") as f:
            result["machine"]["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for _ in range(args.repeats):
        for setting in args.settings.split(","):
            done = subprocess.run([sys.executable, __file__, "--worker", setting, str(fit), str(hold)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{setting} run failed:\n{done.stderr[-2000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            result["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
            result["summary"] = summarise(result["runs"])
            atomic_write_json(RESULTS / f"{args.out}.json", result)  # after every run: a cut-short benchmark still counts
            atomic_write_text(RESULTS / f"{args.out}.md", render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
