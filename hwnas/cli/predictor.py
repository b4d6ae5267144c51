"""``hwnas predictor``: measure an accuracy dataset on a supernet, fit a predictor, evaluate it.

A parser over the library: :mod:`hwnas.accuracy` measures (experiment scripts call it too, so
that they measure exactly as the command does), :mod:`hwnas.predictor_fit` fits and scores.
"""

from __future__ import annotations

import json
import time

from predictors import DEFAULT_FEATURES, DEFAULT_TARGET, FEATURE_RECIPES, PREDICTORS, TARGET_TRANSFORMS, AccuracyDataset
from hwnas.cli._group import command_group
from hwnas.accuracy import SPLITS, update_accuracy_dataset
from hwnas.arguments import add_measurement_args
from hwnas.predictor_fit import evaluate_predictor, fit_predictor


def register(sub) -> None:
    """Add ``hwnas predictor dataset|fit|eval``."""
    cmds = command_group(sub, "predictor", description="Measure subnet accuracies on a trained supernet, fit an "
                         "accuracy predictor, and score it on held-out subnets.")

    ds = cmds.add_parser("dataset", help="measure the accuracy of N spread-sampled subnets",
                         description="Sample N subnets spread over the FLOPs range and block types (the space's "
                         "extremes first), recalibrate "
                         "BatchNorm for each on training images, measure its accuracy on the validation split, "
                         "and append it to OUT (JSON lines). Re-running the same command resumes.")
    ds.add_argument("--checkpoint", required=True, help="supernet.pt written by 'hwnas supernet train'")
    ds.add_argument("--n", type=int, required=True, help="number of subnets the file should hold")
    ds.add_argument("--out", required=True, help="accuracy dataset file (.jsonl); resumed when it exists")
    ds.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's)")
    ds.add_argument("--data", "--data-dir", dest="data", default=None,
                    help="dataset file or folder (default: the checkpoint's)")
    ds.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ds.add_argument("--split", default="val", choices=SPLITS, help="split to measure on (default val: predictors "
                    "are fitted on validation accuracies; keep test for final reports)")
    ds.add_argument("--seed", type=int, default=0, help="seed of the subnet sample (default 0); another seed gives "
                    "other subnets measured the same way, e.g. a held-out set")
    ds.add_argument("--no-extremes", dest="extremes", action="store_false",
                    help="leave out the space's corner archs (largest, smallest, largest of each block type), which "
                    "are otherwise the first of the N; for a held-out set beside a fit set")
    ds.add_argument("--measure-seed", type=int, default=0, help="seed of the calibration images and the eval subset "
                    "(default 0); accuracies are comparable only between equal measure seeds")
    add_measurement_args(ds)
    ds.add_argument("--time-budget", type=float, default=None,
                    help="stop after this many seconds (the file stays resumable)")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=_dataset)

    fit = cmds.add_parser("fit", help="fit a predictor on an accuracy dataset",
                          description="Fit an accuracy predictor on an accuracy dataset. '--model auto' picks the "
                          "kind with the best k-fold Kendall tau.")
    fit.add_argument("--data", required=True, help="accuracy dataset (.jsonl) from 'hwnas predictor dataset'")
    fit.add_argument("--model", default="auto", choices=sorted(PREDICTORS) + ["auto"],
                     help="predictor kind, or auto: select by k-fold Kendall tau (default auto)")
    fit.add_argument("--out", required=True, help="predictor file to write (.pt)")
    fit.add_argument("--features", default=DEFAULT_FEATURES, choices=FEATURE_RECIPES,
                     help=f"feature recipe (predictors/features.py; default {DEFAULT_FEATURES}): encoding alone, "
                     "+ log FLOPs/params per stage (cost), + per layer slot (layers), + block mix (composition)")
    fit.add_argument("--target", default=DEFAULT_TARGET, choices=TARGET_TRANSFORMS,
                     help=f"what the models fit (predictors/targets.py; default {DEFAULT_TARGET}): standardised "
                     "accuracy, or the normal quantile of its rank (rank_gauss)")
    fit.add_argument("--folds", type=int, default=None, help="folds of the auto selection (default 5, or 3 from "
                     "1,000 subnets on)")
    fit.add_argument("--candidates", default=",".join(sorted(PREDICTORS)),
                     help=f"comma-separated kinds auto selects among (default {','.join(sorted(PREDICTORS))})")
    fit.add_argument("--seed", type=int, default=0, help="seed of the predictor and the folds (default 0)")
    fit.set_defaults(func=_fit)

    ev = cmds.add_parser("eval", help="score a predictor on held-out measured subnets",
                         description="Print Kendall tau, Spearman rho and RMSE of a predictor on an accuracy "
                         "dataset it was not fitted on, and optionally plot predicted against measured accuracy.")
    ev.add_argument("--predictor", required=True, help="predictor file from 'hwnas predictor fit'")
    ev.add_argument("--data", required=True, help="held-out accuracy dataset (.jsonl)")
    ev.add_argument("--plot", default=None, help="write a predicted-vs-measured scatter to this .png")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=_eval)


# ----------------------------------------------------------------------------- commands


def _dataset(args) -> int:
    update_accuracy_dataset(args.checkpoint, args.n, args.out, dataset=args.dataset, data=args.data,
                            device=args.device, split=args.split, seed=args.seed, measure_seed=args.measure_seed,
                            calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
                            eval_batch_size=args.eval_batch_size, eval_limit=args.eval_limit,
                            time_budget_s=args.time_budget, progress=not args.quiet, extremes=args.extremes)
    return 0


def _fit(args) -> int:
    data = AccuracyDataset.load(args.data)
    start = time.monotonic()
    candidates = [k.strip() for k in args.candidates.split(",") if k.strip()]
    predictor, scores = fit_predictor(data, args.model, features=args.features, folds=args.folds, seed=args.seed,
                                      candidates=candidates, target=args.target)
    if scores:
        ran = predictor.meta["selection_folds_run"]
        print(f"{predictor.meta['selection_folds']}-fold Kendall tau: " + "  ".join(
            f"{k} {v:.4f}" + (f" (stopped after {ran[k]})" if ran[k] < predictor.meta["selection_folds"] else "")
            for k, v in scores.items()))
    predictor.save(args.out, {"data": str(args.data)})
    print(f"fitted {predictor.kind} ({predictor.features} features, {predictor.target} target) on {len(data)} "
          f"subnets in {time.monotonic() - start:.1f} s -> {args.out}")
    return 0


def _eval(args) -> int:
    metrics, predictor = evaluate_predictor(args.predictor, args.data, args.plot)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{predictor.kind} on {metrics['n']} subnets: Kendall tau {metrics['kendall_tau']:.4f}  "
              f"Spearman {metrics['spearman']:.4f}  RMSE {100 * metrics['rmse']:.3f} points")
    if args.plot:
        print(f"plot -> {args.plot}")
    return 0
