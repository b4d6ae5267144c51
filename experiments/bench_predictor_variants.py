"""Which predictor variant (kind, feature recipe, hyper-parameters) ranks subnets best? 5-fold
cross-validation on the fit sets of the committed JPEG-CIFAR-10 accuracy datasets, CPU only.

Feature recipes (``predictors/features.py``): ``cost`` = encoding + log FLOPs/params per stage and
in total; ``layers`` = ``cost`` + log FLOPs/params of every layer slot; ``composition`` = ``layers``
+ block-type shares (the default). A variant's JSON may also set ``target`` (``predictors/targets.py``). Each dataset's fit set is
the one the GPU benchmark uses (``holdout_split(n, 1000, seed=0)``; the 1,000 fit subnets of the
end-to-end run); variants are ranked by their mean CV tau on these folds alone. The held-out
scores (fitted on the whole fit set, scored on every other subnet) are reported beside them, for
information only: choosing by them would tune on the test set.

    PYTHONPATH=. python experiments/bench_predictor_variants.py            # ~35 min on 2 cores
    PYTHONPATH=. python experiments/bench_predictor_variants.py --variant mlp10=mlp:cost:'{"members": 10}'

Writes experiments/results/predictor/predictor_variants_cifar.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from predictors import AccuracyDataset, make_predictor, rank_metrics
from predictors.benchmark import holdout_split, limit_threads
from predictors.selection import cross_val_kendall
from search_space import SearchSpace
from search_space.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (fit file, held-out file or None: then the fit/held-out split is holdout_split's)
DATASETS = {
    "sandwich_55ep": (RESULTS / "predictor" / "predictor_cifar_dataset.jsonl", None),
    "mixed_64ep": (RESULTS / "gpu_e2e" / "predictor" / "accuracy_fit.jsonl",
                   RESULTS / "gpu_e2e" / "predictor" / "accuracy_holdout.jsonl"),
    "sandwich_106ep": (RESULTS / "supernet_cifar" / "cifar_sandwich_106ep" / "predictor_cifar_dataset.jsonl", None),
    "sandwich_cutout_98ep": (RESULTS / "supernet_cifar" / "cifar_sandwich_cutout_98ep" / "predictor_cifar_dataset.jsonl", None),
}


# name -> (kind, feature recipe, hyper-parameters)
VARIANTS = {
    "gp": ("gp", "cost", {}), "gp/layers": ("gp", "layers", {}),
    "mlp": ("mlp", "cost", {}), "mlp/layers": ("mlp", "layers", {}), "mlp10": ("mlp", "cost", {"members": 10}),
    "blend": ("blend", "cost", {}), "blend/layers": ("blend", "layers", {}),
    "blend-mlp-gp": ("blend", "cost", {"members": {"mlp": {}, "gp": {}}}),
    "blend-mlp-gp/layers": ("blend", "layers", {"members": {"mlp": {}, "gp": {}}}),
}


def parse_variant(text: str) -> tuple[str, tuple[str, str, dict]]:
    """``NAME=KIND:FEATURES[:JSON]`` -> (name, (kind, features, hparams)); one-line error otherwise."""
    try:
        name, spec = text.split("=", 1)
        kind, features, *rest = spec.split(":", 2)
        return name, (kind, features, json.loads(rest[0]) if rest else {})
    except ValueError as e:
        raise SystemExit(f"bench_predictor_variants: --variant {text!r} is invalid ({e}); expected "
                         "NAME=KIND:FEATURES[:JSON hyper-parameters]")


def parse_dataset(text: str) -> tuple[str, tuple[Path, Path | None]]:
    """``NAME=FIT[,HOLDOUT]`` -> (name, (fit path, holdout path or None)); one-line error otherwise."""
    name, sep, paths = text.partition("=")
    files = [Path(p) for p in paths.split(",")] if sep else []
    missing = [str(f) for f in files if not f.is_file()]
    if not name or not 1 <= len(files) <= 2 or missing:
        raise SystemExit(f"bench_predictor_variants: --dataset {text!r} is invalid; expected NAME=FIT.jsonl[,HOLDOUT.jsonl] "
                         f"of existing files{' (missing: ' + ', '.join(missing) + ')' if missing else ''}")
    return name, (files[0], files[1] if len(files) == 2 else None)


def load(fit_path: Path, holdout_path: Path | None, n_fit: int):
    """(space, X_fit, y_fit, X_test, y_test) of one dataset."""
    data = AccuracyDataset.load(fit_path)
    space = SearchSpace.from_config(data.header["space_config"])
    X, y = data.arrays(space)
    if holdout_path is not None:
        Xt, yt = AccuracyDataset.load(holdout_path).arrays(space)
        return space, X[:n_fit], y[:n_fit], Xt, yt
    # at least 500 held out (the benchmark), or 40% of a small dataset
    fit_idx, test_idx = holdout_split(len(y), min(n_fit, len(y) - min(500, len(y) * 2 // 5)), seed=0)
    return space, X[fit_idx], y[fit_idx], X[test_idx], y[test_idx]


def main(argv=None) -> int:
    """Run the comparison and write the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=None, metavar="NAME=KIND:FEATURES[:JSON]",
                   help="a variant to compare, repeatable (default: the built-in list, VARIANTS)")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME=FIT.jsonl[,HOLDOUT.jsonl]",
                   help="a dataset instead of the built-in CIFAR ones, repeatable (without HOLDOUT, the fit set is "
                   "holdout_split's first --n-fit)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--n-fit", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS / "predictor"), help="output folder (default experiments/results/predictor)")
    p.add_argument("--name", default="predictor_variants_cifar", help="output file stem")
    p.add_argument("--threads", type=int, default=1, help="torch and scikit-learn CPU threads (default 1: two runs "
                   "side by side with 2 threads each on 2 cores took 730 s per variant and dataset, with 1 thread "
                   "130-150 s; 0 leaves them all)")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    variants = dict(map(parse_variant, args.variant)) if args.variant else VARIANTS
    datasets = dict(map(parse_dataset, args.dataset)) if args.dataset else DATASETS
    rows = []
    for name, (fit_path, holdout_path) in datasets.items():
        space, Xf, yf, Xt, yt = load(fit_path, holdout_path, args.n_fit)
        for variant, (kind, recipe, hparams) in variants.items():
            make = lambda: make_predictor(kind, space, features=recipe, seed=0, **hparams)
            start = time.perf_counter()
            cv = float(np.mean(cross_val_kendall(make, Xf, yf, args.folds, 0)))
            mean, _ = make().fit(Xf, yf).predict(Xt)
            test = rank_metrics(yt, mean)
            rows.append({"dataset": name, "variant": variant, "kind": kind, "features": recipe, "hparams": hparams,
                         "cv_kendall_tau": cv, "test_kendall_tau": test["kendall_tau"], "test_rmse": test["rmse"],
                         "n_fit": len(yf), "n_test": len(yt), "seconds": round(time.perf_counter() - start, 1)})
            print(f"{name:22s} {variant:14s} cv tau {cv:.4f}  test tau {test['kendall_tau']:.4f}  "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    mean_of = lambda v, key: float(np.mean([x[key] for x in rows if x["variant"] == v]))
    mean_cv = {v: mean_of(v, "cv_kendall_tau") for v in variants}
    mean_test = {v: mean_of(v, "test_kendall_tau") for v in variants}
    best = max(mean_cv, key=mean_cv.get)
    context = {"command": "PYTHONPATH=. python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{platform.processor() or 'CPU'}, {os.cpu_count()} CPU cores"}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {**context, "variants": {k: list(v) for k, v in variants.items()},
                      "rows": rows, "mean_cv_kendall_tau": mean_cv, "mean_test_kendall_tau": mean_test,
                      "selected": best})
    lines = ["# Accuracy-predictor variants on the JPEG-CIFAR-10 datasets", "",
             f"{context['date']}; `{context['command']}`; {context['machine']}.", "",
             f"Chosen on the {args.folds}-fold Kendall tau of the fit sets alone; the held-out column is for "
             "information.", "",
             "Variants: " + "; ".join(f"`{k}` = {v[0]}, {v[1]} features{', ' + json.dumps(v[2]) if v[2] else ''}"
                                      for k, v in variants.items()) + ".", "",
             "| variant | mean CV tau (fit sets) | mean held-out tau | " + " | ".join(datasets) + " |",
             "| --- | ---: | ---: | " + " | ".join("---" for _ in datasets) + " |"]
    for v in sorted(variants, key=mean_cv.get, reverse=True):
        cells = [next(f"{x['cv_kendall_tau']:.4f} / {x['test_kendall_tau']:.4f}" for x in rows
                      if x["variant"] == v and x["dataset"] == d) for d in datasets]
        lines.append(f"| {v} | {mean_cv[v]:.4f} | {mean_test[v]:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "Per dataset: CV tau / held-out tau. Fit / held-out sizes: " + ", ".join(
        f"{d} {next(x['n_fit'] for x in rows if x['dataset'] == d)} / {next(x['n_test'] for x in rows if x['dataset'] == d)}"
        for d in datasets) + f". Best by CV: **{best}**.", ""]
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
