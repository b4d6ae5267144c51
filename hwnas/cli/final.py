"""``hwnas final``: train the chosen architectures of Pareto fronts and the baselines alone, with one
recipe, and measure them side by side on every device (the final stage of ``hwnas run``)."""

from __future__ import annotations

import json
from pathlib import Path

from hwnas.cli.space import add_space_arg
from search_space.errors import UserError


def register(sub) -> None:
    """Add ``hwnas final``."""
    from hwnas.cli._group import add_command

    p = add_command(
        sub, "final", description="Train the TOP most accurate architectures of each Pareto front stand-alone (from scratch and/or "
                    "from their supernet weights), the baselines a user would pick instead (the space's largest, "
                    "timm networks, any module:callable) with the same recipe, time all of them on every device with "
                    "the backend settings of that device's latency table, and write OUT/results.json, one plot per "
                    "device and the verdicts. Resumes: finished models are not retrained.")
    add_space_arg(p)
    p.add_argument("--pareto", action="append", required=True, metavar="DEVICE=FILE",
                   help="a front (pareto_<device>.json from 'hwnas search'); repeat per device")
    p.add_argument("--table", action="append", default=[], metavar="DEVICE=TABLE",
                   help="time DEVICE with this latency table's backend settings (file or shipped name); "
                        "devices without one are not timed")
    p.add_argument("--top", type=int, default=3, help="architectures per front (default 3)")
    p.add_argument("--choose", choices=("auto", "spread", "top", "measured", "capacity"), default="auto",
                   help="which TOP: measured, the highest measured supernet accuracy (--accuracy-data or a verified "
                   "front) within the device's --budget, re-ranked by the fine-tuned estimate with --checkpoint; capacity, the most FLOPs within it (searched on its "
                   "--table); spread along the front by latency, fastest and slowest included; top, the front's "
                   "most accurate by the supernet; auto (default): measured plus one capacity arch for devices "
                   "with a --budget, spread for the others")
    p.add_argument("--budget", action="append", default=[], metavar="DEVICE=MS",
                   help="latency budget in ms of a device (with --choose auto, measured or capacity, judged by its --table)")
    p.add_argument("--baseline", action="append", default=[], help="baseline: largest, resnet18, timm:<model> or "
                   "module:callable (repeatable; default: largest and resnet18)")
    p.add_argument("--init", action="append", choices=("scratch", "inherited"), default=[],
                   help="initialisation of the chosen models (repeatable; default: both with --checkpoint, the better "
                        "on validation deployed, else scratch)")
    p.add_argument("--checkpoint", default=None, help="supernet.pt: inherited weights and supernet accuracies")
    p.add_argument("--accuracy-data", default=None, help="accuracy dataset (.jsonl) of the supernet: the ranking "
                   "check's pool and, without --checkpoint, its supernet accuracies")
    p.add_argument("--ranking", type=int, default=0, help="K archs spread along the fronts trained on a short "
                   "schedule for the supernet-vs-stand-alone Kendall tau (default 0: off)")
    p.add_argument("--ranking-epochs", type=int, default=5, help="epochs of the ranking check (default 5)")
    p.add_argument("--estimate-epochs", type=int, default=2, help="with --checkpoint: the measured rule picks by "
                   "each candidate's validation accuracy after this many epochs from its inherited weights, and the "
                   "ranking check scores that estimate too (default 2; 0: the supernet's accuracy alone)")
    p.add_argument("--estimate-lr", type=float, default=None, help="peak lr of the estimate (default 1/5 of the recipe's)")
    p.add_argument("--estimate-candidates", type=int, default=8, help="archs per device the estimate scores "
                   "(the measured rule's most accurate within the budget; default 8)")
    p.add_argument("--dataset", default="cifar10-jpeg", help="dataset (default cifar10-jpeg)")
    p.add_argument("--data", "--data-dir", dest="data", default=None, help="dataset file or folder")
    p.add_argument("--device", default="auto", help="training device: auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every model (default 30)")
    p.add_argument("--batch-size", type=int, default=512, help="batch size (default 512)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default 0.1 per 256 images, at most 0.2)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing (default 0.1)")
    p.add_argument("--logit-scale", type=float, default=1.0, help="logits x S before the loss (default 1)")
    p.add_argument("--augment", default=None, help="training augmentation instead of the dataset's own")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order (default 0); also of the train/val split, except with --checkpoint, whose own split is kept so that no supernet training image is in val")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder (results.json, models/, plots)")
    p.set_defaults(func=_final)


def _pairs(specs: list[str], option: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise UserError(f"{option} {spec!r}: expected DEVICE=VALUE")
        out[name] = value
    return out


def timing_device(name: str, table) -> dict:
    """The device dict (backend, batch size, dtype, threads) a latency table was measured with."""
    s = table.backend_settings
    return {"name": name, "backend": s["spec"], "batch_size": s["batch_size"], "dtype": s["dtype"],
            "threads": s.get("threads")}


def _final(args) -> int:
    import torch

    from hwnas.data_wiring import load_for_space
    from hwnas.final_stage import FinalStage, run_final
    from hwnas.final_training import plain_config
    from search_space import SearchSpace
    from search_space.train_dist import resolve_device

    for value, option in ((args.top, "--top"), (args.epochs, "--epochs"), (args.batch_size, "--batch-size")):
        if value < 1:
            raise UserError(f"{option} {value} is invalid; expected an integer >= 1")
    if args.estimate_epochs < 0 or args.estimate_candidates < 1:
        raise UserError(f"--estimate-epochs {args.estimate_epochs} / --estimate-candidates {args.estimate_candidates}: "
                        "expected epochs >= 0 and candidates >= 1")
    if args.estimate_lr is not None and not args.estimate_lr > 0:
        raise UserError(f"--estimate-lr {args.estimate_lr} is invalid; expected a positive number")
    if args.ranking and args.ranking < 3:
        raise UserError(f"--ranking {args.ranking} is invalid; expected 0 (off) or at least 3 archs")
    space = SearchSpace.from_config(args.space)
    fronts = {}
    for name, path in _pairs(args.pareto, "--pareto").items():
        try:
            fronts[name] = json.loads(Path(path).read_text())["front"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--pareto {name}={path}: not a front file ({e}); expected pareto_<device>.json "
                            "from 'hwnas search'") from None
    from latency_tables import LatencyTable

    # other machines' tables are the point here: no fingerprint warning
    tables = {n: LatencyTable.load(t, space=space, check_machine=False) for n, t in _pairs(args.table, "--table").items()}
    devices = [timing_device(n, t) for n, t in tables.items()]
    budgets = {}
    for name, ms in _pairs(args.budget, "--budget").items():
        try:
            budgets[name] = float(ms.removesuffix("ms"))
        except ValueError:
            raise UserError(f"--budget {name}={ms}: expected a latency in ms, e.g. {name}=0.5") from None
        if name not in tables:
            raise UserError(f"--budget {name}=...: no --table {name}=TABLE to judge it by")
    pool = []
    if args.accuracy_data:
        from predictors import AccuracyDataset

        data = AccuracyDataset.load(args.accuracy_data)
        data.check_space(space)
        pool = [(r["arch"], r["accuracy"]) for r in data.records]
    # both where we can: inherited won on CIFAR, scratch on digits (experiments/results/final/final_cifar_pool.md)
    inits = args.init or (["scratch", "inherited"] if args.checkpoint else ["scratch"])
    if "inherited" in inits and not args.checkpoint:
        raise UserError("--init inherited needs --checkpoint (the supernet whose weights the models inherit)")
    device = resolve_device(args.device)
    split_seed = args.seed
    if args.checkpoint:
        from search_space import checkpoint_meta

        # the supernet's own train/val split: with another one its training images would sit in val
        split_seed = checkpoint_meta(args.checkpoint).get("split_seed", args.seed)
    bundle = load_for_space(args.dataset, args.data, space, seed=split_seed, device=device)
    config = plain_config(args.epochs, args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          label_smoothing=args.label_smoothing, logit_scale=args.logit_scale, augment=args.augment,
                          seed=args.seed)
    stage = FinalStage(space, args.out, config, bundle, torch.device(device), args.checkpoint, progress=not args.quiet)
    summary = run_final(stage, fronts, devices, top=args.top, choose=args.choose, budgets=budgets, tables=tables,
                        baselines=args.baseline or ["largest", "resnet18"],
                        inits=inits, ranking=args.ranking, ranking_epochs=args.ranking_epochs, pool=pool,
                        estimate_epochs=args.estimate_epochs, estimate_lr=args.estimate_lr,
                        estimate_candidates=args.estimate_candidates)
    for d, verdicts in summary["verdicts"].items():
        for v in verdicts:
            word = ("at half the latency and at least as accurate" if v["half_latency_and_at_least_as_accurate"]
                    else "faster and at least as accurate" if v["faster_and_at_least_as_accurate"] else "not better")
            print(f"{d}: {v['model']} vs {v['baseline']}: latency x{v['latency_ratio']:.3f}, "
                  f"test {100 * v['test_gain']:+.2f} pts: {word}")
    for d, key in summary["picked"].items():
        r = stage.results["models"][key]
        rule = summary["chosen_by"].get(d, {}).get(r["arch"])
        print(f"{d}: picked {r['label']} ({f'{rule} rule, ' if rule else ''}{r['init']}): test {r['test']:.4f}")
    if "ranking" in summary:
        from hwnas.run_report import ranking_line

        print(ranking_line(summary["ranking"]))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0
