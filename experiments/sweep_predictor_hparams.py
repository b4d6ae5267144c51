r"""Predictor hyper-parameters, chosen by 5-fold CV Kendall tau on the fit sets of JPEG-CIFAR-10
accuracy datasets (never on held-out subnets), CPU only.

Three modes: ``--random N`` draws N MLP settings from a grid (seeded), ``--around JSON`` varies
one MLP setting at a time around a base, ``--settings JSON-LIST`` tries the given settings of
``--kind``. Each line of the output (JSON lines, appended, so an interrupted sweep keeps what it
did) holds the dataset, the kind, the settings, the mean CV tau and the seconds. The chosen
settings are then confirmed on all six datasets with ``bench_predictor_variants.py``
(``experiments/results/predictor/predictor_mlp_tuned_cifar.md``).

    PYTHONPATH=. python experiments/sweep_predictor_hparams.py --dataset b1024=PATH --random 24 --out sweep.jsonl
    PYTHONPATH=. python experiments/sweep_predictor_hparams.py --dataset b1024=PATH --around '{"members": 10}' --out s.jsonl
    PYTHONPATH=. python experiments/sweep_predictor_hparams.py --dataset b1024=PATH --kind gbt \
        --settings '[{}, {"subsample": 0.5}]' --out gbt.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments.bench_predictor_variants import load, parse_dataset
from predictors.benchmark import limit_threads
from predictors import make_predictor
from predictors.selection import cross_val_kendall

GRID = {"hidden": [64, 128, 256, 512], "layers": [1, 2, 3], "weight_decay": [1e-4, 1e-3, 1e-2, 1e-1],
        "rank_weight": [0.0, 0.3, 1.0, 3.0, 10.0], "members": [5, 10], "val_fraction": [0.1, 0.2],
        "lr": [3e-4, 1e-3, 3e-3], "temperature": [0.05, 0.2, 1.0], "patience": [10, 20]}
# One-at-a-time alternatives for --around.
AROUND = {"temperature": [0.5, 2.0, 5.0], "rank_weight": [3.0, 30.0, 100.0], "val_fraction": [0.05, 0.2],
          "members": [10, 20], "weight_decay": [0.01, 0.3], "lr": [0.001, 0.01], "layers": [3],
          "hidden": [64, 256], "patience": [20]}


def random_settings(n: int, seed: int) -> list[dict]:
    """The defaults, then ``n`` settings drawn from :data:`GRID`."""
    rng = np.random.default_rng(seed)
    draw = lambda values: type(values[0])(rng.choice(values))
    return [{}] + [{k: draw(v) for k, v in GRID.items()} for _ in range(n)]


def settings_around(base: dict) -> list[dict]:
    """``base``, then ``base`` with one setting changed at a time (:data:`AROUND`)."""
    return [base] + [{**base, k: v} for k, values in AROUND.items() for v in values if base.get(k) != v]


def main(argv=None) -> int:
    """Run the sweep and append its lines to --out."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, metavar="NAME=FIT.jsonl[,HOLDOUT.jsonl]", help="accuracy dataset")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--random", type=int, metavar="N", help="N random settings from the grid (plus the defaults)")
    mode.add_argument("--around", metavar="JSON", help="vary one MLP setting at a time around these settings")
    mode.add_argument("--settings", metavar="JSON-LIST", help="these settings of --kind, in order")
    p.add_argument("--kind", default="mlp", help="predictor kind of --settings (default mlp; --random and --around "
                   "are for mlp)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random draw (default 1)")
    p.add_argument("--n-fit", type=int, default=1000)
    p.add_argument("--out", required=True, help="JSON-lines output, appended")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; 0 leaves them all)")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    name, (fit_path, holdout_path) = parse_dataset(args.dataset)
    if args.kind != "mlp" and args.settings is None:
        raise SystemExit(f"sweep_predictor_hparams: --kind {args.kind!r} needs --settings; --random and --around sweep mlp")
    try:
        if args.random is not None:
            settings = random_settings(args.random, args.seed)
        elif args.around is not None:
            settings = settings_around(json.loads(args.around))
        else:
            settings = json.loads(args.settings)
    except json.JSONDecodeError as e:
        raise SystemExit(f"sweep_predictor_hparams: {args.around or args.settings!r} is not JSON ({e}); expected "
                         "an object (--around) or a list of objects (--settings)")
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise SystemExit(f"sweep_predictor_hparams: --settings {args.settings!r} is invalid; expected a JSON list of objects")
    space, Xf, yf, _, _ = load(fit_path, holdout_path, args.n_fit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, hp in enumerate(settings):
        start = time.perf_counter()
        cv = float(np.mean(cross_val_kendall(lambda: make_predictor(args.kind, space, features="composition", seed=0, **hp),
                                             Xf, yf, 5, 0)))
        row = {"dataset": name, "kind": args.kind, "hparams": hp, "cv_kendall_tau": round(cv, 4),
               "seconds": round(time.perf_counter() - start, 1)}
        with out.open("a") as f:  # one line per setting: an interrupted sweep keeps what it did
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(settings)}] cv tau {cv:.4f} {hp}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
