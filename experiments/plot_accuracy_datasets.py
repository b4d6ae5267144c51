"""Accuracy against FLOPs of several accuracy datasets in one PNG (one colour per supernet), so
training recipes and spaces can be compared over all their measured subnets, not two of them.

    PYTHONPATH=. python experiments/plot_accuracy_datasets.py \
        --dataset "cifar, wd 5e-4=experiments/results/supernet_cifar/cifar_sandwich_b1024/predictor_cifar_dataset.jsonl" \
        --dataset "cifar, wd 2e-3=experiments/results/supernet_cifar/cifar_sandwich_wd2e-3/predictor_cifar_dataset.jsonl" \
        --out experiments/results/supernet_cifar/cifar_weight_decay.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictors.accuracy_dataset import AccuracyDataset  # noqa: E402
from search_space.io import save_png  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append", required=True, metavar="LABEL=JSONL",
                   help="an accuracy dataset (predictor_cifar_dataset.jsonl) and its legend label; repeat")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="Spread subnets: validation accuracy against FLOPs")
    args = p.parse_args(argv)
    for item in args.dataset:
        if "=" not in item:
            p.error(f"--dataset {item!r} is invalid; expected LABEL=PATH")
    return args


def summary(label: str, flops: np.ndarray, acc: np.ndarray) -> str:
    """One line: size, median and spread of a dataset's accuracies."""
    return (f"{label}: {len(acc)} subnets, val accuracy median {100 * np.median(acc):.2f}%, "
            f"p10 {100 * np.percentile(acc, 10):.2f}%, max {100 * acc.max():.2f}%, "
            f"MFLOPs {flops.min():.0f}..{flops.max():.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for item in args.dataset:
        label, path = item.split("=", 1)
        data = AccuracyDataset.load(path)
        space = data.space()
        flops = np.array([space.flops(a) for a in data.archs(space)]) / 1e6
        acc = data.accuracies()
        print(summary(label, flops, acc))
        ax.scatter(flops, 100 * acc, s=3, alpha=0.35, edgecolors="none", label=f"{label} ({space.name})")
    ax.set_xscale("log")
    ax.set_xlabel("MFLOPs (log)")
    ax.set_ylabel("validation accuracy (%), BN recalibrated")
    ax.set_title(args.title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8, markerscale=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    print(f"wrote {save_png(fig, args.out, dpi=120)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
