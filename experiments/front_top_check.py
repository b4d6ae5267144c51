"""Does each front reach the top? Its most accurate point against the best measured subnet (issue 18).

For each device: the front's most accurate point (its measured supernet accuracy where the front or
the accuracy dataset has one, else its prediction) against the best measured subnet of the accuracy
dataset within the device's latency budget (judged by its table), and against the best overall.
Works on committed files only, no GPU:

    python experiments/front_top_check.py  # the first cifar_pool run's fronts, H100 + CPU tables
    W=experiments/results/gpu_whole; python experiments/front_top_check.py --fronts $W/search --out $W \
      --accuracy-data $W/predictor/accuracy_fit.jsonl --accuracy-data $W/predictor/accuracy_holdout.jsonl \
      --accuracy-data $W/search/measured_accuracy.jsonl --device cpu=$W/tables/cpu.json=4.5 \
      --device gpu_b1=$W/tables/gpu_b1.json=0.16 --device gpu_b256=$W/tables/gpu_b256.json=0.68
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "final"
DEFAULT_DATA = HERE / "results" / "supernet_cifar" / "cifar_pool_recipe" / "predictor_cifar_dataset.jsonl"
DEFAULT_DEVICES = ["cpu=cifar_pool_cpu_ort_b1_fp32=4.5", "gpu_b1=cifar_pool_h100_cuda_b1_bf16=0.16",
                   "gpu_b256=cifar_pool_h100_cuda_b256_bf16=0.68"]


def front_top(front: list[dict], measured: dict[str, float]) -> tuple[str, float, str]:
    """The front's most accurate point: ``(arch, accuracy, where the accuracy comes from)``."""
    def acc(e: dict) -> tuple[float, str]:
        a = e["accuracy"]
        if isinstance(a, dict) and "measured" in a:
            return float(a["measured"]), "front (verified)"
        if e["arch"] in measured:
            return measured[e["arch"]], "accuracy dataset"
        return float(a["predicted"] if isinstance(a, dict) else a), "predicted"

    best = max(front, key=lambda e: acc(e)[0])
    return (best["arch"], *acc(best))


def main(argv: list[str] | None = None) -> int:
    """Check every device; write ``front_top_check.{json,md}``."""
    from latency_tables import LatencyTable
    from predictors import AccuracyDataset
    from search_space import SearchSpace
    from search_space.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="cifar_pool")
    p.add_argument("--fronts", default=str(RESULTS / "final_cifar_pool" / "search"), help="folder of pareto_<device>.json")
    p.add_argument("--accuracy-data", action="append", default=None, metavar="JSONL",
                   help="repeatable: every measured subnet counts (default: the first cifar_pool run's 4,659)")
    p.add_argument("--device", action="append", default=None, metavar="NAME=TABLE=BUDGET_MS",
                   help=f"repeatable (default: {' '.join(DEFAULT_DEVICES)})")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    space = SearchSpace.from_config(args.space)
    data = args.accuracy_data or [str(DEFAULT_DATA)]
    measured = {r["arch"]: r["accuracy"] for path in data for r in AccuracyDataset.load(path).records}
    best_all = max(measured.values())
    rows = []
    for spec in args.device or DEFAULT_DEVICES:
        name, table_name, budget = spec.split("=")
        table = LatencyTable.load(table_name, space=space, check_machine=False)
        archs = list(measured)
        within = [a for a, ms in zip(archs, table.predict_many(archs)) if ms <= float(budget)]
        best_in = max(within, key=measured.get)
        front = json.loads((Path(args.fronts) / f"pareto_{name}.json").read_text())["front"]
        arch, acc, source = front_top(front, measured)
        rows.append({"device": name, "budget_ms": float(budget), "front_top_arch": arch, "front_top": acc,
                     "source": source, "best_within_budget": measured[best_in], "best_within_budget_arch": best_in,
                     "subnets_within_budget": len(within), "gap_within_budget_pts": round(100 * (measured[best_in] - acc), 2),
                     "gap_to_best_overall_pts": round(100 * (best_all - acc), 2)})
    rel = lambda path: os.path.relpath(path, HERE.parent)  # noqa: E731 - paths as the repo names them
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "fronts": rel(args.fronts), "accuracy_data": [rel(path) for path in data], "subnets": len(measured),
              "best_overall": best_all, "devices": rows}
    out = Path(args.out)
    atomic_write_json(out / "front_top_check.json", result)
    lines = ["# Each front's most accurate point against the best measured subnet (issue 18)", "",
             f"{result['date']}, `{result['command']}`; fronts `{result['fronts']}`, {len(measured)} measured subnets "
             f"(best overall {best_all:.4f}).", "",
             "| device | budget (ms) | front's top (accuracy, source) | best measured within budget | gap (pts) | gap to best overall (pts) |",
             "| --- | ---: | --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['budget_ms']} | `{r['front_top_arch']}` {r['front_top']:.4f} ({r['source']}) | "
                     f"`{r['best_within_budget_arch']}` {r['best_within_budget']:.4f} (of {r['subnets_within_budget']}) | "
                     f"{r['gap_within_budget_pts']} | {r['gap_to_best_overall_pts']} |")
    atomic_write_text(out / "front_top_check.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
