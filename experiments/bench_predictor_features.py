"""Do per-layer cost features help the accuracy predictors rank subnets? 5-fold cross-validation on
the fit sets of the committed JPEG-CIFAR-10 accuracy datasets, CPU only.

Feature recipes (``predictors/features.py``): ``cost`` = encoding + log FLOPs/params per stage and
in total; ``layers`` = ``cost`` + log FLOPs/params of every layer slot. Each dataset's fit set is
the one the GPU benchmark uses (``holdout_split(n, 1000, seed=0)``; all 1,000 fit subnets of the
end-to-end run); the recipe is chosen on these folds alone. The held-out scores (fitted on the
whole fit set, scored on every other subnet) are reported beside them, for information.

    PYTHONPATH=. python experiments/bench_predictor_features.py            # ~15 min on 2 cores

Writes experiments/results/predictor_features_cifar.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from predictors import AccuracyDataset, make_predictor, rank_metrics
from predictors.benchmark import holdout_split
from predictors.selection import cross_val_kendall
from search_space import SearchSpace
from search_space.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (fit file, held-out file or None: then the fit/held-out split is holdout_split's)
DATASETS = {
    "sandwich_55ep": (RESULTS / "predictor_cifar_dataset.jsonl", None),
    "mixed_64ep": (RESULTS / "gpu_e2e" / "predictor" / "accuracy_fit.jsonl",
                   RESULTS / "gpu_e2e" / "predictor" / "accuracy_holdout.jsonl"),
    "sandwich_106ep": (RESULTS / "cifar_sandwich_106ep" / "predictor_cifar_dataset.jsonl", None),
    "sandwich_cutout_98ep": (RESULTS / "cifar_sandwich_cutout_98ep" / "predictor_cifar_dataset.jsonl", None),
}


def load(fit_path: Path, holdout_path: Path | None, n_fit: int):
    """(space, X_fit, y_fit, X_test, y_test) of one dataset."""
    data = AccuracyDataset.load(fit_path)
    space = SearchSpace.from_config(data.header["space_config"])
    X, y = data.arrays(space)
    if holdout_path is not None:
        Xt, yt = AccuracyDataset.load(holdout_path).arrays(space)
        return space, X[:n_fit], y[:n_fit], Xt, yt
    fit_idx, test_idx = holdout_split(len(y), min(n_fit, len(y) - 500), seed=0)
    return space, X[fit_idx], y[fit_idx], X[test_idx], y[test_idx]


def main(argv=None) -> int:
    """Run the comparison and write the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="gp,mlp,blend", help="predictor kinds (default gp,mlp,blend)")
    p.add_argument("--recipes", default="cost,layers", help="feature recipes (default cost,layers)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--n-fit", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS), help="output folder (default experiments/results)")
    args = p.parse_args(argv)
    kinds, recipes = args.kinds.split(","), args.recipes.split(",")
    rows = []
    for name, (fit_path, holdout_path) in DATASETS.items():
        space, Xf, yf, Xt, yt = load(fit_path, holdout_path, args.n_fit)
        for kind in kinds:
            for recipe in recipes:
                make = lambda: make_predictor(kind, space, features=recipe, seed=0)
                start = time.perf_counter()
                cv = float(np.mean(cross_val_kendall(make, Xf, yf, args.folds, 0)))
                mean, _ = make().fit(Xf, yf).predict(Xt)
                test = rank_metrics(yt, mean)
                rows.append({"dataset": name, "kind": kind, "features": recipe, "cv_kendall_tau": cv,
                             "test_kendall_tau": test["kendall_tau"], "test_rmse": test["rmse"], "n_fit": len(yf),
                             "n_test": len(yt), "seconds": round(time.perf_counter() - start, 1)})
                print(f"{name:22s} {kind:5s} {recipe:7s} cv tau {cv:.4f}  test tau {test['kendall_tau']:.4f}  "
                      f"({rows[-1]['seconds']:.0f} s)", flush=True)
    mean_cv = {(k, r): float(np.mean([x["cv_kendall_tau"] for x in rows if x["kind"] == k and x["features"] == r]))
               for k in kinds for r in recipes}
    best = max(mean_cv, key=mean_cv.get)
    context = {"command": "PYTHONPATH=. python " + " ".join(["experiments/bench_predictor_features.py"] + sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{platform.processor() or 'CPU'}, {os.cpu_count()} CPU cores"}
    out = Path(args.out)
    atomic_write_json(out / "predictor_features_cifar.json", {**context, "rows": rows,
                      "mean_cv_kendall_tau": {f"{k}/{r}": v for (k, r), v in mean_cv.items()},
                      "selected": {"kind": best[0], "features": best[1]}})
    lines = ["# Feature recipes for the accuracy predictors (JPEG-CIFAR-10 datasets)", "",
             f"{context['date']}; `{context['command']}`; {context['machine']}.", "",
             f"Chosen on the {args.folds}-fold Kendall tau of the fit sets alone; the held-out column is for "
             "information.", "",
             "| dataset | kind | features | CV tau (fit set) | held-out tau | held-out RMSE (pts) | n fit / test |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {x['dataset']} | {x['kind']} | {x['features']} | {x['cv_kendall_tau']:.4f} | "
              f"{x['test_kendall_tau']:.4f} | {100 * x['test_rmse']:.3f} | {x['n_fit']} / {x['n_test']} |" for x in rows]
    lines += ["", "Mean CV tau over the datasets: " + ", ".join(f"{k}/{r} {v:.4f}" for (k, r), v in mean_cv.items())
              + f"; best: **{best[0]} with {best[1]} features**.", ""]
    atomic_write_text(out / "predictor_features_cifar.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
