"""Held-out Kendall tau of each predictor kind against the number of subnets it was fitted on.

Reads the ``predictor_cifar.json`` reports of ``gpu_predictor_cifar.py`` runs that differ only in
``--n-fit`` (same accuracy dataset) and draws one line per kind, marking the CV-selected one:

    PYTHONPATH=. python experiments/plot_learning_curve.py --out experiments/results/NAME.png \
        DIR_250/predictor_cifar.json DIR_500/predictor_cifar.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_space.io import save_png  # noqa: E402


def load_points(paths: list[str]) -> list[dict]:
    """(n_fit, n_test, tau per kind, selected kind) of each report, sorted by n_fit."""
    points = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        points.append({"n_fit": r["n_fit"], "n_test": r["n_test"], "selected": r["selected_test"]["kind"],
                       "tau": {row["kind"]: row["kendall_tau"] for row in r["rows"]}})
    return sorted(points, key=lambda x: x["n_fit"])


def main(argv=None) -> int:
    """Plot the learning curve and print it as a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="predictor_cifar.json files, one per --n-fit")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--target", type=float, default=0.85, help="horizontal line (default 0.85, issue 4's target)")
    args = p.parse_args(argv)
    points = load_points(args.reports)
    kinds = list(points[0]["tau"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    n = [pt["n_fit"] for pt in points]
    for kind in kinds:
        ax.plot(n, [pt["tau"][kind] for pt in points], marker="o", label=kind)
    ax.scatter(n, [pt["tau"][pt["selected"]] for pt in points], s=120, facecolors="none", edgecolors="black",
               label="selected by 5-fold CV", zorder=3)
    ax.axhline(args.target, color="tab:red", ls="--", lw=1, label=f"target {args.target:g}")
    ax.set_xscale("log")
    ax.minorticks_off()  # log-scale minor labels (3x10^2 ...) clutter a few points
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("subnets fitted on")
    ax.set_ylabel("held-out Kendall tau")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    print(f"wrote {save_png(fig, args.out, dpi=120)}")
    print("| fitted on | held out | " + " | ".join(kinds) + " | selected |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in kinds) + " | --- |")
    for pt in points:
        print(f"| {pt['n_fit']} | {pt['n_test']} | " + " | ".join(f"{pt['tau'][k]:.4f}" for k in kinds)
              + f" | {pt['selected']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
