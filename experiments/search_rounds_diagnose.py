"""Where search rounds lose the true front on a fully measured dataset: per round, for every
true-front subnet not yet measured, whether the inner search proposed it (a candidate), its
predicted accuracy's rank among all dataset subnets and among the candidates, and its depth in
the non-dominated layers the batch pick walks; plus the round that measured it.

Same universe and settings as ``experiments/bench_search_rounds.py``; extra keyword settings
of ``search_rounds`` are passed with ``--set name=value`` (one change at a time)::

    nice -n 5 python experiments/search_rounds_diagnose.py --seeds 0 1 --out /tmp/diag.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench_search_rounds import (DEFAULT_DATASET, DEFAULT_TABLES, Lookup, load_universe,  # noqa: E402
                                             scores, true_front)
import search._rounds as R  # noqa: E402
from search import Objective, search_rounds, table_latency  # noqa: E402
from search._pareto import pareto_layers_2d  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--table", type=Path, action="append", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a search_rounds keyword (JSON value)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    space, accuracy, tables = load_universe(args.dataset, args.table or DEFAULT_TABLES)
    keys = [str(a) for a in space.archs]
    latency = {d: dict(zip(keys, t.predict_many(space.archs).tolist())) for d, t in tables.items()}
    q_all = np.asarray([accuracy[k] for k in keys])
    truth = {d: true_front(q_all, np.asarray([latency[d][k] for k in keys]), keys) for d in tables}
    front_keys = sorted({k for t in truth.values() for k in t["front"]})
    X_all = space.X
    doc = {"settings": extra, "front": {k: accuracy[k] for k in front_keys}, "seeds": []}

    orig_choose = R._choose
    for seed in args.seeds:
        rounds_info: list = []

        def spy(space_, measure, costs, budgets, cache, candidates, fitted, k, explore, improve_share, *a, **kw):
            out = orig_choose(space_, measure, costs, budgets, cache, candidates, fitted, k, explore, improve_share, *a, **kw)
            picked = out[0]
            model = fitted["accuracy"]
            mean, std = model.predict(X_all)
            measured = {str(a) for a in cache.archs}
            cand = {str(c) for c in candidates}
            info = {"measured": len(measured), "candidates": len(cand), "picked": [str(x) for x in picked],
                    "resid_sd_measured": None, "front": {}}
            mv = cache.values()
            if len(cache.archs):
                mm, _ = model.predict(np.asarray(space_.encode_many(cache.archs), float))
                info["resid_sd_measured"] = float(np.std(mm - mv[:, 0]))
            for d in tables:
                lat = np.asarray([latency[d][k] for k in keys])
                opt = mean + explore * np.nan_to_num(std)
                layers = pareto_layers_2d(opt, lat)
                depth = {}
                for li, layer in enumerate(layers):
                    for i in layer:
                        depth[keys[i]] = li
                for fk in truth[d]["front"]:
                    if fk in measured:
                        continue
                    i = keys.index(fk)
                    info["front"].setdefault(fk, {}).update({
                        "true": accuracy[fk], "pred": float(mean[i]), "std": float(std[i]),
                        "rank_all": int((mean > mean[i]).sum()) + 1,
                        "in_candidates": fk in cand, f"layer_{d}": depth.get(fk),
                        "picked": fk in {str(x) for x in picked}})
            rounds_info.append(info)
            return out

        R._choose = spy
        try:
            lookup = Lookup(accuracy)
            t0 = time.process_time()
            result = search_rounds(space, [Objective("accuracy", "maximize", lookup, measured=True, cache=True)],
                                   [table_latency(t, d) for d, t in tables.items()], args.queries, seed=seed, **extra)
        finally:
            R._choose = orig_choose
        measured = [str(a) for a in result.archs]
        round_of = {str(a): int(r) for a, r in zip(result.archs, result.round_of)}
        sc = scores(measured, accuracy, latency, truth)
        doc["seeds"].append({"seed": seed, "scores": sc, "cpu_s": round(time.process_time() - t0, 1),
                             "front_round": {k: round_of.get(k) for k in front_keys}, "rounds": rounds_info})
        print(f"seed {seed}: " + ", ".join(f"{d}: hv {v['hv_ratio']:.3f} recall {v['recall']:.2f}" for d, v in sc.items())
              + f" front found in rounds {[round_of.get(k) for k in front_keys]}", flush=True)
        for r, info in enumerate(rounds_info, 1):
            top = {k: v for k, v in info["front"].items()}
            print(f"  round {r}: {info['candidates']} cand, resid sd {info['resid_sd_measured']:.4f}; missing front: "
                  + "; ".join(f"{v['true']:.4f} pred {v['pred']:.4f}±{v['std']:.4f} rank {v['rank_all']} "
                              f"cand {int(v['in_candidates'])} layer {[v.get('layer_' + d) for d in tables]}"
                              for v in top.values()), flush=True)
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
