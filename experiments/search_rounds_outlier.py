"""Why search rounds miss 0.97 of the true front's hypervolume on ``cifar_pool``: how far the
most accurate subnet of the true front stands from the rest, and whether any predictor fitted
on the other subnets could rank it near the top.

Uses the benchmark's universe (``experiments/bench_search_rounds.py``): the 4,659 measured
``cifar_pool`` subnets and the CPU table. Reports, per device: the true front; the hypervolume
ratio left without its most accurate point; that point's nearest measured neighbours (by
encoding); and the GBT predictor (one member) fitted on every *other* subnet (the best a model could
know): its prediction of the point, its residual in standard deviations of the fit's residuals,
and its rank among the subnets in the latency window where the point adds hypervolume.
Writes ``experiments/results/search/search_rounds_outlier.{md,json}``::

    nice -n 5 python experiments/search_rounds_outlier.py      # one GBT fit, ~1 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench_search_common import RESULTS, facts  # noqa: E402
from experiments.bench_search_rounds import DEFAULT_DATASET, DEFAULT_TABLES, load_universe, true_front  # noqa: E402
from search import hypervolume_2d, pareto_front_2d  # noqa: E402
from search_space.io import atomic_write_json, atomic_write_text  # noqa: E402


def analyse(space, accuracy: dict, latency: np.ndarray, neighbours: int = 6) -> dict:
    """The study of one device's front top (see the module doc)."""
    from predictors import make_predictor

    keys = [str(a) for a in space.archs]
    q = np.asarray([accuracy[k] for k in keys])
    truth = true_front(q, latency, keys)
    front = pareto_front_2d(q, latency)
    top = int(front[np.argmax(q[front])])
    rest = np.ones(len(q), bool)
    rest[top] = False
    without = hypervolume_2d(q[rest], latency[rest], *truth["ref"]) / truth["hv"]
    dist = np.abs(space.X - space.X[top]).sum(1)
    near = [int(i) for i in np.argsort(dist)[1:neighbours + 1]]
    model = make_predictor("gbt", space.base, seed=0, members=1).fit(space.X[rest], q[rest])  # one member: its mean
    mean, _ = model.predict(space.X)
    resid_sd = float(np.std(mean[rest] - q[rest]))
    # the window where the top point adds hypervolume: from the next front point's cost to the reference cost
    lower = float(latency[front][latency[front] < latency[top]].max(initial=0.0))
    window = (latency > lower) & (latency < truth["ref"][1])
    second = float(np.sort(q)[-2])
    return {"top": {"arch": keys[top], "accuracy": float(q[top]), "latency": float(latency[top]),
                    "next_best_accuracy": second, "gap_pts": 100 * (float(q[top]) - second)},
            "front": [{"arch": keys[i], "accuracy": float(q[i]), "latency": float(latency[i])} for i in front],
            "hv_ratio_without_top": without,
            "neighbours": [{"arch": keys[i], "distance": float(dist[i]), "accuracy": float(q[i])} for i in near],
            "loo_prediction": float(mean[top]), "loo_residual_sd": (float(q[top]) - float(mean[top])) / resid_sd,
            "fit_residual_sd_pts": 100 * resid_sd, "rank_overall": int((mean > mean[top]).sum()) + 1,
            "window": [lower, truth["ref"][1]], "window_size": int(window.sum()),
            "rank_in_window": int((window & (mean > mean[top])).sum()) + 1,
            "share_of_random_200_finding_it": 200 / len(q)}


def main(argv=None) -> int:
    """Run the study and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--table", type=Path, action="append", default=None)
    p.add_argument("--out", default="search_rounds_outlier")
    args = p.parse_args(argv)
    space, accuracy, tables = load_universe(args.dataset, args.table or DEFAULT_TABLES)
    doc = {"facts": facts(), "command": "python experiments/search_rounds_outlier.py " + " ".join(argv or sys.argv[1:]),
           "devices": {d: analyse(space, accuracy, np.asarray(t.predict_many(space.archs), float))
                       for d, t in tables.items()}}
    lines = [f"# The top of the `cifar_pool` true front ({doc['facts']['date']}, load {doc['facts']['load_average_1m']})",
             "", f"`{doc['command'].strip()}`", ""]
    for d, a in doc["devices"].items():
        t = a["top"]
        lines += [f"## {d}", "",
                  f"- Most accurate front subnet `{t['arch']}`: {t['accuracy']:.4f} at {t['latency']:.2f} ms, "
                  f"{t['gap_pts']:.2f} points above the next best of all subnets ({t['next_best_accuracy']:.4f}).",
                  f"- Hypervolume ratio of the true front without it: {a['hv_ratio_without_top']:.3f} "
                  "(what a search reaches that finds every other front subnet but this one).",
                  "- Its nearest measured subnets (L1 distance of encodings): "
                  + ", ".join(f"{n['accuracy']:.4f} (d {n['distance']:g})" for n in a["neighbours"]) + ".",
                  f"- GBT fitted on the other {len(space.archs) - 1} subnets predicts {a['loo_prediction']:.4f}: residual "
                  f"{a['loo_residual_sd']:.1f} SD of the fit's residuals ({a['fit_residual_sd_pts']:.2f} points); rank "
                  f"{a['rank_overall']} of all by prediction, {a['rank_in_window']} of the {a['window_size']} subnets in "
                  f"its window ({a['window'][0]:.2f}-{a['window'][1]:.2f} ms).",
                  f"- Random sampling of 200 measures it with probability {a['share_of_random_200_finding_it']:.3f}.", ""]
    out = RESULTS / "search" / args.out
    atomic_write_json(out.with_suffix(".json"), doc)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
