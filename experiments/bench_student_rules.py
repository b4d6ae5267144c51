"""Which subnets should a training step train besides the largest? A comparison of student rules.

The GPU CIFAR-10 run showed random subnets far below both extremes (median 0.71 against 0.83 for
the smallest and 0.88 for the largest): the BigNAS sandwich trains the pure largest and pure
smallest paths every step, while mixes of block types are trained only when a random subnet
happens to draw them. This script trains the same supernet once per rule (same seed, steps and
subnets per step) and scores the largest, the smallest and a fixed set of random subnets, each
BN-recalibrated, on the test split:

- ``sandwich``: largest + smallest + N random (BigNAS);
- ``mixed``: largest + smallest sizes with a random block type per layer + N random;
- ``uniform``: largest + (N + 1) random.

    PYTHONPATH=. python experiments/bench_student_rules.py                      # digits, ~3 min on 2 cores
    PYTHONPATH=. python experiments/bench_student_rules.py --dataset cifar10-jpeg \\
        --data .data/cifar10_jpeg.npz --space cifar --epochs 30 --batch-size 512 --device cuda

Writes experiments/results/supernet_bench/student_rules_<dataset>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hwnas.data_wiring import calibration_batches, epoch_batches, load_for_space, probe_batches, split_batches
from search_space import SearchSpace, Supernet
from search_space.evaluation import evaluate_archs
from search_space.io import atomic_write_text, save_png
from search_space.training import STUDENT_RULES, TrainConfig, time_sandwich_steps, train_supernet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "supernet_bench"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    p.add_argument("--data", default=None, help="dataset file (digits needs none)")
    p.add_argument("--space", default=str(ROOT / "hwnas" / "configs" / "space_digits.yaml"),
                   help="space preset or file (default: the quickstart's digits space)")
    p.add_argument("--rules", default=",".join(STUDENT_RULES), help="comma-separated rules (default: all)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per rule (default 15)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate at --batch-size (default 0.05)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes to compare (default: --batch-size); "
                   "the learning rate scales linearly from --lr at --batch-size")
    p.add_argument("--time-budget-s", type=float, default=None, help="train each configuration for about this many "
                   "seconds instead of --epochs (epochs planned from timed, warmed-up steps): compares batch sizes "
                   "at equal time, which is what the GPU's launch-bound steps make interesting")
    p.add_argument("--num-random", type=int, default=1, help="random subnets per step (default 1)")
    p.add_argument("--archs", type=int, default=100, help="random subnets scored per rule (default 100)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per rule (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default=None, help="results stem (default experiments/results/supernet_bench/student_rules_<dataset>)")
    return p.parse_args(argv)


def plan_epochs(args, space: SearchSpace, bundle, config: TrainConfig, steps: int) -> int:
    """Epochs of ``config`` that fit ``args.time_budget_s`` (at least 1)."""
    device = torch.device(args.device)
    step_s, _, _ = time_sandwich_steps(space, config, probe_batches(bundle, config, device), device)
    return max(1, int(args.time_budget_s // (step_s * steps)))


def train_and_score(args, space: SearchSpace, bundle, rule: str, seed: int, archs: list, batch_size: int) -> dict:
    """Train one supernet with ``rule`` at ``batch_size``; return accuracies of largest, smallest
    and ``archs``."""
    device = torch.device(args.device)
    steps = len(bundle.train) // batch_size
    config = TrainConfig(epochs=args.epochs, batch_size=batch_size, lr=args.lr * batch_size / args.batch_size,
                         num_random=args.num_random, students=rule, seed=seed)
    if args.time_budget_s is not None:
        config = dataclasses.replace(config, epochs=plan_epochs(args, space, bundle, config, steps))
    torch.manual_seed(seed)
    supernet = Supernet(space).to(device)
    start = time.perf_counter()
    train_supernet(supernet, epoch_batches(bundle, batch_size, seed, device), steps, config, progress=False)
    train_s = time.perf_counter() - start
    autocast = torch.bfloat16 if device.type == "cuda" else None
    accs = evaluate_archs(supernet, [space.largest(), space.smallest(), *archs],
                          calibration_batches(bundle, 256, device), split_batches(bundle.test, bundle, 500),
                          20, autocast)
    return {"rule": rule, "seed": seed, "batch_size": batch_size, "epochs": config.epochs, "lr": config.peak_lr,
            "train_s": round(train_s, 1), "largest": accs[0], "smallest": accs[1], "random": accs[2:]}


def summarise(run: dict) -> dict:
    """Median, quartiles and the share of random subnets at or above the smallest."""
    r = np.asarray(run["random"])
    return {"rule": run["rule"], "seed": run["seed"], "batch_size": run.get("batch_size"), "epochs": run.get("epochs"),
            "train_s": run["train_s"], "largest": run["largest"],
            "smallest": run["smallest"], "random_median": float(np.median(r)), "random_p10": float(np.percentile(r, 10)),
            "random_p90": float(np.percentile(r, 90)), "random_mean": float(r.mean()),
            "share_above_smallest": float((r >= run["smallest"]).mean())}


def plot(runs: list[dict], flops: np.ndarray, path: Path) -> None:
    """Accuracy against FLOPs of the scored random subnets, one colour per rule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in runs:
        ax.scatter(flops / 1e6, run["random"], s=10, alpha=0.6,
                   label=f"{run['rule']} (seed {run['seed']}, batch {run.get('batch_size')})")
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("test accuracy (BN recalibrated)")
    ax.set_title("random subnets after training with each student rule")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv=None) -> int:
    """Train once per rule and seed, score, write json/md/png."""
    args = parse_args(argv)
    rules = args.rules.split(",")
    unknown = [r for r in rules if r not in STUDENT_RULES]
    if unknown:
        sys.exit(f"error: --rules {unknown[0]!r} is unknown; expected some of {', '.join(STUDENT_RULES)}")
    if args.device == "cpu":
        torch.set_num_threads(2)
    space = SearchSpace.from_config(args.space)
    bundle = load_for_space(args.dataset, args.data, space, seed=0, device=args.device)
    rng = np.random.default_rng(12345)
    archs = [space.sample(rng) for _ in range(args.archs)]
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch_size]
    runs = []
    for seed in range(args.seeds):
        for batch_size in sizes:
            for rule in rules:
                run = train_and_score(args, space, bundle, rule, seed, archs, batch_size)
                runs.append(run)
                s = summarise(run)
                print(f"{rule:9s} seed {seed} batch {batch_size} ({run['epochs']} epochs): largest {s['largest']:.4f} "
                      f"smallest {s['smallest']:.4f} random median {s['random_median']:.4f} p10 {s['random_p10']:.4f} "
                      f"({s['train_s']:.0f} s)", flush=True)
    stem = Path(args.out) if args.out else RESULTS / f"student_rules_{args.dataset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or "cpu")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu}, {torch.get_num_threads()} threads"
    command = "PYTHONPATH=. python experiments/bench_student_rules.py " + " ".join(sys.argv[1:])
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command.strip(), "device": device, "args": vars(args), "archs": [str(a) for a in archs]}
    atomic_write_text(stem.with_suffix(".json"), json.dumps({**header, "runs": runs}, indent=1))
    lines = [f"# Student rules on {args.dataset} ({device})", "", f"{header['date']}; `{header['command']}`", "",
             (f"About {args.time_budget_s:.0f} s of training per configuration" if args.time_budget_s else
              f"{args.epochs} epochs") + f", peak lr {args.lr} per batch {args.batch_size} (linear scaling), "
             f"{args.num_random} random subnet(s) per step besides the rule's; {args.archs} fixed random subnets "
             "scored on the test split.", "",
             "| rule | seed | batch | epochs | largest | smallest | random p10 | random median | random p90 | share >= smallest | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        s = summarise(run)
        lines.append(f"| {s['rule']} | {s['seed']} | {s['batch_size']} | {s['epochs']} | {s['largest']:.4f} "
                     f"| {s['smallest']:.4f} | {s['random_p10']:.4f} "
                     f"| {s['random_median']:.4f} | {s['random_p90']:.4f} | {s['share_above_smallest']:.2f} "
                     f"| {s['train_s']:.0f} |")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(runs, np.array([space.flops(a) for a in archs], dtype=float), stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
