"""Which supernet training ranks `cifar_pool`'s archs as stand-alone training does? (issue 18, item 3)

The ground truth is every arch this project has already trained alone on JPEG-CIFAR-10 with the final
recipe (ResNet-18's plain one, seed 0), read from the committed `hwnas final` results under
`experiments/results/final/`: 30-epoch models (the main set) and the 15-epoch ranking models of the third
run. A supernet is scored on all of them (BN-recalibrated validation accuracy, as `hwnas final`'s ranking
check measures it) and the Kendall tau between supernet and stand-alone validation accuracy is reported,
beside the `sandwich` supernet's own scores where those were recorded (21 archs of the 8.3-minute supernet).
No stand-alone training is needed per variant: one supernet training (one device call) per row.

    python experiments/ranking_study.py truth                   # the stand-alone set (no GPU, committed files)
    python experiments/ranking_study.py score --checkpoint runs/gpu/supernet/supernet.pt --label families \\
        --data .data/cifar10_jpeg.npz --out DIR                 # one supernet's scores and taus
    python experiments/ranking_study.py report DIR [DIR ...]    # table + scatter plot

`truth` writes experiments/results/ranking/standalone.json; `report` ranking_study.{md,png} beside it.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "experiments" / "results"
TRUTH = RESULTS / "ranking" / "standalone.json"
# the 8.3-minute sandwich supernet's scores, measured by `hwnas final` with the default settings
SANDWICH = RESULTS / "final" / "final_cifar_pool_capacity_rule" / "seed0" / "supernet_accuracy.jsonl"


def kendall(a, b) -> float | None:
    """Kendall tau (b) of two paired sequences, None under 3 pairs."""
    from scipy.stats import kendalltau

    if len(a) < 3:
        return None
    return round(float(kendalltau(a, b).statistic), 4)


def final_models():
    """(results file, model record) of every network in the committed `hwnas final` results."""
    for path in sorted(glob.glob(str(RESULTS / "final" / "**" / "results.json"), recursive=True)):
        for m in json.loads(Path(path).read_text()).get("models", {}).values():
            yield Path(path), m


def gather_truth() -> dict:
    """Stand-alone (scratch, seed 0) validation and test accuracy per arch and epochs, from every
    committed final results file; an arch trained twice with the same settings keeps its mean."""
    from search_space import SearchSpace

    largest = str(SearchSpace.from_config("cifar_pool").largest())
    found: dict[tuple[str, int], list[tuple[float, float, str]]] = {}
    for path, m in final_models():
        arch = m.get("arch") or (largest if m.get("baseline") == "largest" else None)
        if arch is None or m.get("init") != "scratch" or m.get("recipe", {}).get("seed") != 0:
            continue
        found.setdefault((arch, m["epochs"]), []).append((m["val"], m["test"], str(path.relative_to(ROOT))))
    rows = [{"arch": a, "epochs": e, "val": round(float(np.mean([v for v, _, _ in runs])), 4),
             "test": round(float(np.mean([t for _, t, _ in runs])), 4), "runs": len(runs),
             "sources": sorted({s for _, _, s in runs})} for (a, e), runs in sorted(found.items())]
    return {"space": "cifar_pool", "dataset": "cifar10-jpeg", "seed": 0, "archs": rows}


def read_scores(path: Path) -> dict[str, float]:
    """Arch -> accuracy of an accuracy dataset file."""
    lines = path.read_text().splitlines()[1:]
    return {r["arch"]: r["accuracy"] for r in map(json.loads, lines)}


def taus(truth: list[dict], scores: dict[str, float]) -> dict:
    """Tau per stand-alone epoch count, on every scored arch and on the sandwich-scored subset."""
    sandwich = read_scores(SANDWICH) if SANDWICH.exists() else {}  # results/ does not travel to the GPU host
    out = {}
    for epochs in sorted({r["epochs"] for r in truth}):
        rows = [r for r in truth if r["epochs"] == epochs and r["arch"] in scores]
        common = [r for r in rows if r["arch"] in sandwich]
        out[str(epochs)] = {"n": len(rows), "tau": kendall([scores[r["arch"]] for r in rows], [r["val"] for r in rows]),
                            "n_common": len(common),
                            "tau_common": kendall([scores[r["arch"]] for r in common], [r["val"] for r in common])}
    return out


def score(args) -> int:
    """Score the truth set on one supernet; writes scores.jsonl and summary.json under ``--out``."""
    import time

    from hwnas.accuracy import measure_accuracy_dataset
    from search_space import SearchSpace

    for spec in args.finetune:  # a bad spec fails before any work
        parse_finetune(spec)
    data = json.loads(Path(args.truth).read_text())
    truth, space = data["archs"], SearchSpace.from_config(data["space"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = list(dict.fromkeys(r["arch"] for r in truth))
    start = time.monotonic()
    measure_accuracy_dataset(args.checkpoint, [space.parse(a) for a in archs], out / "scores.jsonl",
                             data=args.data, device=args.device, progress=False,
                             eval_limit=args.eval_limit, calib_batches=args.calib_batches)
    scores = read_scores(out / "scores.jsonl")
    summary = {"label": args.label, "checkpoint": str(args.checkpoint), "seconds": round(time.monotonic() - start, 1),
               "taus": taus(truth, scores)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for spec in args.finetune:
        finetune(args, spec, truth, space)
    return 0


def parse_finetune(spec: str) -> tuple[int, float]:
    """``EPOCHS:LR`` -> (epochs, lr); a one-line error names a bad spec."""
    try:
        epochs, lr = spec.split(":")
        epochs, lr = int(epochs), float(lr)
        if epochs < 1 or lr <= 0:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--finetune {spec!r}: expected EPOCHS:LR, e.g. 2:0.04 (epochs >= 1, lr > 0)") from None
    return epochs, lr


def finetune(args, spec: str, truth: list[dict], space) -> None:
    """A second estimator on the same supernet, the one `hwnas final` picks by: each arch of the
    30-epoch truth set trained for a few epochs from its inherited weights with the final recipe at
    peak ``lr`` (:meth:`hwnas.final_stage.FinalStage.estimate`, resumable), scored on the validation
    split; written as a sibling folder that ``report`` reads like a supernet's (``<out>_ft<E>_lr<LR>/``)."""
    from hwnas.data_wiring import load_for_space
    from hwnas.final_stage import FinalStage
    from hwnas.final_training import plain_config
    from search_space.train_dist import resolve_device

    epochs, lr = parse_finetune(spec)
    out = Path(f"{args.out.rstrip('/')}_ft{epochs}_lr{lr:g}")
    device = resolve_device(args.device)
    bundle = load_for_space(args.dataset, args.data, space, seed=0, device=device)
    # the final recipe (ResNet-18's plain one, batch 512), which the estimate runs for `epochs` at `lr`
    stage = FinalStage(space, out, plain_config(30, args.batch_size), bundle, device, args.checkpoint, progress=False)
    archs = list(dict.fromkeys(r["arch"] for r in truth if r["epochs"] == 30))
    est = stage.estimate(archs, epochs, lr, calib_batches=args.calib_batches)
    header = {"estimator": f"inherited weights + {epochs} epochs at lr {lr:g}", "checkpoint": str(args.checkpoint)}
    (out / "scores.jsonl").write_text("\n".join(json.dumps(x) for x in
                                                 [header] + [{"arch": a, "accuracy": v} for a, v in est.items()]) + "\n")
    # training seconds of every arch (a resumed call's wall time would leave out what earlier calls did)
    seconds = sum(m["train_seconds"] for m in stage.results["models"].values() if m["role"] == "estimate")
    summary = {"label": f"{args.label} + fine-tune {epochs} ep, lr {lr:g}", "checkpoint": str(args.checkpoint),
               "seconds": round(seconds, 1), "taus": taus(truth, read_scores(out / "scores.jsonl"))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def report(args) -> int:
    """Table of taus per supernet (the recorded sandwich scores first) and a scatter per supernet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search_space import SearchSpace

    data = json.loads(TRUTH.read_text())
    truth = data["archs"]
    space = SearchSpace.from_config(data["space"])
    smallest_first = str(space.smallest()).split("/")[1]
    runs = [("sandwich (recorded)", read_scores(SANDWICH))]
    runs += [(json.loads((Path(d) / "summary.json").read_text())["label"], read_scores(Path(d) / "scores.jsonl"))
             for d in args.dirs]
    lines = ["| supernet | 30 ep: n | tau | on the 21 sandwich-scored | 15 ep: n | tau |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    cols = min(4, len(runs))
    rows_n = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 4 * rows_n), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, (label, scores) in zip(axes.flat, runs):
        t = taus(truth, scores)
        t30, t15 = t.get("30", {}), t.get("15", {})
        lines.append(f"| {label} | {t30.get('n')} | {t30.get('tau')} | {t30.get('tau_common')} | {t15.get('n')} | {t15.get('tau')} |")
        rows = [r for r in truth if r["epochs"] == 30 and r["arch"] in scores]
        for same, color, name in ((True, "tab:red", "first stage = the smallest's"), (False, "tab:blue", "other")):
            sel = [r for r in rows if (r["arch"].split("/")[1] == smallest_first) == same]
            ax.scatter([scores[r["arch"]] for r in sel], [r["val"] for r in sel], s=14, c=color, label=name)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(textwrap.fill(f"{label}: tau {t30.get('tau')} (n={t30.get('n')})", 52), fontsize=8)
        ax.set(xlabel="estimated val accuracy",
               ylabel="stand-alone val accuracy (30 epochs)")
    lines += ["", "Mean accuracy by the first stage's blocks (30-epoch set): where the supernet's gap to stand-alone "
              "training differs between groups, it ranks one group above the other whatever their own accuracy.", "",
              "| first stage | n | stand-alone val | " + " | ".join(label for label, _ in runs) + " |",
              "| --- | ---: | ---: |" + " ---: |" * len(runs)]
    groups: dict[str, list[dict]] = {}
    for r in truth:
        if r["epochs"] == 30:
            groups.setdefault(r["arch"].split("/")[1], []).append(r)
    for first, rows in sorted(groups.items(), key=lambda kv: -np.mean([r["val"] for r in kv[1]])):
        cells = [f"{np.mean([s[r['arch']] for r in rows if r['arch'] in s]):.4f}" if any(r["arch"] in s for r in rows)
                 else "" for _, s in runs]
        lines.append(f"| `{first}` | {len(rows)} | {np.mean([r['val'] for r in rows]):.4f} | " + " | ".join(cells) + " |")
    lines += ["", "Tau within each group (30-epoch set): the first stage's offset is one error, not the only one.", "",
              "| supernet | smallest's first stage: n | tau | other first stages: n | tau |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, scores in runs:
        cells = []
        for same in (True, False):
            rows = [r for r in truth if r["epochs"] == 30 and r["arch"] in scores
                    and (r["arch"].split("/")[1] == smallest_first) == same]
            cells += [str(len(rows)), str(kendall([scores[r["arch"]] for r in rows], [r["val"] for r in rows]))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    thirty = [r for r in truth if r["epochs"] == 30]
    proxies = {"FLOPs": space.flops, "parameters": space.params}
    lines += ["", "Size alone as the ranking (30-epoch set): " + ", ".join(
        f"{name} tau {kendall([f(space.parse(r['arch'])) for r in thirty], [r['val'] for r in thirty])}"
        for name, f in proxies.items()) + ".", "",
        "Supernets against each other (tau of their scores on the archs both scored):", ""]
    plain = [r for r in runs if "fine-tune" not in r[0]]  # supernets, not the estimators built on them
    for i, (a, sa) in enumerate(plain):
        for b, sb in plain[i + 1:]:
            common = [x for x in sa if x in sb]
            lines.append(f"- {a} vs {b}: {kendall([sa[x] for x in common], [sb[x] for x in common])} "
                         f"({len(common)} archs)")
    lines += ["", *pick_table(truth, space, runs), "", *noise_ceiling(truth)]
    fig.tight_layout()
    png = TRUTH.parent / "ranking_study.png"
    fig.savefig(png, dpi=110)
    md = TRUTH.parent / "ranking_study.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {md} and {png}")
    return 0


def pick_table(truth: list[dict], space, runs: list[tuple[str, dict]]) -> list[str]:
    """What each estimator would deploy: per budget of the GPU config (shipped tables), the stand-alone
    accuracy of the arch it ranks first among the 30-epoch archs within the budget, beside the best."""
    from latency_tables import LatencyTable

    budgets = {"cpu": ("cifar_pool_cpu_ort_b1_fp32", 4.5), "gpu_b1": ("cifar_pool_h100_cuda_b1_bf16", 0.16),
               "gpu_b256": ("cifar_pool_h100_cuda_b256_bf16", 0.68)}
    val = {r["arch"]: r["val"] for r in truth if r["epochs"] == 30}
    lines = ["Picking one arch per budget (the GPU config's, judged by the shipped tables) among the 30-epoch archs: "
             "stand-alone val accuracy of each estimator's first choice.", "",
             "| estimator | " + " | ".join(f"{d} ({ms} ms)" for d, (_, ms) in budgets.items()) + " |",
             "| --- |" + " ---: |" * len(budgets)]
    within = {}
    for d, (name, ms) in budgets.items():
        table = LatencyTable.load(ROOT / "latency_tables" / "tables" / f"{name}.json", space=space, check_machine=False)
        archs = list(val)
        within[d] = [a for a, t in zip(archs, table.predict_many(archs)) if t <= ms]
    lines.append("| best within the budget (stand-alone) | " + " | ".join(
        f"{max(val[a] for a in w):.4f} (of {len(w)})" for w in within.values()) + " |")
    for label, scores in runs:
        cells = []
        for w in within.values():
            w = [a for a in w if a in scores]
            cells.append(f"{val[max(w, key=lambda a: scores[a])]:.4f}" if w else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def noise_ceiling(truth: list[dict], draws: int = 2000) -> list[str]:
    """The best tau a perfect estimator could show against one-seed truth: seed-to-seed spread from the
    archs trained with several seeds (committed results), simulated on the 30-epoch set."""
    from scipy.stats import kendalltau

    seeds: dict[str, dict[int, float]] = {}
    for _, m in final_models():
        if m.get("arch") and m.get("init") == "scratch" and m.get("epochs") == 30:
            seeds.setdefault(m["arch"], {})[m["recipe"]["seed"]] = m["val"]
    multi = [list(v.values()) for v in seeds.values() if len(v) > 1]
    if not multi:
        return []
    sd = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in multi])))
    v = np.array([r["val"] for r in truth if r["epochs"] == 30])
    rng = np.random.default_rng(0)
    perfect = np.mean([kendalltau(v, v + rng.normal(0, sd, len(v))).statistic for _ in range(draws)])
    twice = np.mean([kendalltau(v + rng.normal(0, sd, len(v)), v + rng.normal(0, sd, len(v))).statistic
                     for _ in range(draws)])
    return [f"Noise ceiling: {len(multi)} archs trained alone with 2-3 seeds give a seed-to-seed SD of {100 * sd:.2f} "
            f"points. With that noise on the truth alone, an estimator that knew each arch's mean accuracy would show "
            f"tau about {perfect:.2f} against the one-seed truth of the {len(v)} 30-epoch archs; a second seed of "
            f"stand-alone training, about {twice:.2f} ({draws} simulated draws each)."]


def main(argv: list[str] | None = None) -> int:
    """Command line: truth | score | report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("truth", help="gather the stand-alone set from committed results")
    s = sub.add_parser("score", help="score the stand-alone set's archs on one supernet")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--label", required=True, help="the supernet's name in the report, e.g. its student rule")
    s.add_argument("--data", default=None, help="the dataset file, where the checkpoint's path does not exist here")
    s.add_argument("--device", default="auto")
    s.add_argument("--eval-limit", type=int, default=None, help="score on this many validation images (all)")
    s.add_argument("--calib-batches", type=int, default=20, help="BN recalibration batches (%(default)s)")
    s.add_argument("--truth", default=str(TRUTH), help="the stand-alone set written by truth (default: %(default)s)")
    s.add_argument("--out", required=True)
    s.add_argument("--finetune", action="append", default=[], metavar="EPOCHS:LR",
                   help="also score each arch after EPOCHS of training from its inherited weights at peak LR "
                        "(repeatable; e.g. 2:0.04)")
    s.add_argument("--dataset", default="cifar10-jpeg", help="dataset name for --finetune (%(default)s)")
    s.add_argument("--batch-size", type=int, default=512, help="--finetune batch size (the final recipe's %(default)s)")
    r = sub.add_parser("report", help="table and plot of scored supernets")
    r.add_argument("dirs", nargs="*", help="folders written by score")
    args = p.parse_args(argv)
    if args.cmd == "truth":
        from search_space.io import atomic_write_json

        data = gather_truth()
        atomic_write_json(TRUTH, data)
        print(f"{len(data['archs'])} stand-alone results -> {TRUTH}")
        return 0
    return score(args) if args.cmd == "score" else report(args)


if __name__ == "__main__":
    sys.exit(main())
