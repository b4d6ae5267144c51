"""``hwnas search``: multi-objective search (predicted accuracy vs latency per device), verified
by measurement, written as one Pareto front per device. A parser over :mod:`hwnas.searching`
(one-shot) and :mod:`hwnas.search_rounds` (``--rounds``), which the pipeline calls too."""

from __future__ import annotations

import time

from hwnas.cli._group import add_command
from hwnas.cli.space import add_space_arg
from hwnas.searching import DEVICE_NAME, EXTRA_OBJECTIVES, check_count, load_tables, search_and_verify
from search import SAMPLERS, SearchError, parse_budget, storage_url
from search._rounds import DEFAULT_INNER_TRIALS
from search_space import SearchSpace


def register(sub) -> None:
    """Add ``hwnas search``."""
    p = add_command(
        sub, "search",
        description="Search architectures that maximise predicted accuracy and minimise the latency of every "
                    "device (from its latency table), under optional latency budgets; re-measure the fronts on "
                    "the devices that are reachable and write pareto_<device>.json, plots and summary.md.")
    add_space_arg(p)
    p.add_argument("--predictor", default=None,
                   help="accuracy predictor file from 'hwnas predictor fit' (not with --rounds, which fits its own)")
    p.add_argument("--table", action="append", required=True, metavar="[DEVICE=]TABLE",
                   help="latency table of a device (a file or a shipped table name); repeat per device; "
                        "DEVICE defaults to the table's own device label")
    p.add_argument("--budget", action="append", default=[], metavar="DEVICE=LIMIT",
                   help="latency budget, e.g. cpu=5ms or h100=800us; repeat per device")
    p.add_argument("--objective", action="append", default=[], choices=sorted(EXTRA_OBJECTIVES),
                   help="extra objective to minimise (repeatable)")
    p.add_argument("--trials", type=int, default=None,
                   help="completed trials the study should hold in total (with --rounds: predicted trials per round, "
                        f"default {DEFAULT_INNER_TRIALS})")
    p.add_argument("--sampler", default="nsga2", choices=SAMPLERS, help="Optuna sampler (default nsga2)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0; reproducible with one worker)")
    p.add_argument("--population", type=int, default=None,
                   help="population size of nsga2/nsga3 (default: a tenth of --trials, between 10 and 100)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="trials asked and scored at once (default: one generation for nsga2/nsga3)")
    p.add_argument("--workers", type=int, default=1, help="Ray workers sharing the study storage (default 1: no Ray; more need --storage, default OUT/study.journal)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto); a device is re-measured on the node started with "
                        "ray start --resources='{\"device:NAME\": 1}'")
    p.add_argument("--storage", default=None,
                   help="study storage: memory (default), a .journal file, a .db SQLite file or an RDB URL; "
                        "the same storage and --study resume")
    p.add_argument("--study", default=None, help="study name (default hwnas-<space>)")
    p.add_argument("--stall-timeout", type=float, default=None, metavar="S",
                   help="with Ray workers: stop with an error when no trial completes or starts for S seconds "
                        "(default 1800; re-running resumes)")
    r = p.add_argument_group("rounds", "measure accuracy on the supernet (--checkpoint) in rounds: a seed of "
                             "extremes and spread subnets, then fit a predictor, search it, measure the most promising, "
                             "until --queries distinct subnets; the fronts are made of measured subnets only")
    r.add_argument("--rounds", type=int, default=None, help="rounds after the seed (e.g. 8); needs --checkpoint and --queries")
    r.add_argument("--queries", type=int, default=None, help="distinct subnets to measure in all (the budget)")
    r.add_argument("--seed-size", type=int, default=None, help="subnets measured before the first fit (default: 30%% of --queries)")
    r.add_argument("--model", default="gbt", help="predictor kind fitted between rounds (default gbt)")
    r.add_argument("--accuracy-dataset", action="append", default=None,
                   help="accuracy dataset of the same checkpoint ('hwnas predictor dataset'): its subnets count as "
                        "measured and cost no query (repeatable)")
    v = p.add_argument_group("verification")
    v.add_argument("--no-verify", action="store_true", help="skip re-measuring the fronts")
    v.add_argument("--verify-top", type=int, default=12, help="front points re-measured per device, spread along the front (default 12)")
    v.add_argument("--checkpoint", default=None, help="supernet checkpoint: re-evaluate the fronts' accuracy on it")
    v.add_argument("--dataset", default=None, help="dataset of the accuracy re-evaluation (default: the checkpoint's)")
    v.add_argument("--data", "--data-dir", dest="data", default=None, help="dataset file or folder")
    v.add_argument("--eval-device", default="auto", help="auto, cpu, cuda or cuda:N for the accuracy re-evaluation (default auto)")
    v.add_argument("--eval-limit", type=int, default=None, help="evaluate on a fixed random subset of this many images")
    # as 'hwnas predictor dataset' (add_measurement_args there, not imported: it pulls in torch)
    v.add_argument("--calib-batches", type=int, default=20, help="training batches for BN recalibration (default 20)")
    v.add_argument("--calib-batch-size", type=int, default=256, help="batch size of BN recalibration (default 256)")
    p.add_argument("--out", required=True, help="run directory for the outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_search)


def parse_table_args(specs: list[str]) -> list[tuple[str | None, str]]:
    """``[DEVICE=]PATH`` options as (device or None, path); device names must be distinct and simple."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        elif not DEVICE_NAME.match(name):
            raise SearchError(f"--table {spec!r}: device name {name!r} is invalid: expected letters, digits, '_', '.', '-'")
        if not path:
            raise SearchError(f"--table {spec!r} names no table: expected [DEVICE=]PATH")
        out.append((name, path))
    return out


def _check_mode(args) -> None:
    """One-shot search needs --predictor and --trials; rounds need --checkpoint and --queries."""
    if args.rounds is None:
        for value, option in ((args.predictor, "--predictor"), (args.trials, "--trials")):
            if value is None:
                raise SearchError(f"{option} is missing: expected it, or --rounds with --checkpoint and --queries")
        for value, option in ((args.queries, "--queries"), (args.seed_size, "--seed-size"), (args.accuracy_dataset, "--accuracy-dataset")):
            if value is not None:
                raise SearchError(f"{option} belongs to a search in rounds: pass --rounds N too")
        return
    if args.predictor:
        raise SearchError("--predictor and --rounds exclude each other: rounds fit their own predictor (--model)")
    if not args.checkpoint or args.queries is None:
        raise SearchError("--rounds measures accuracy on a supernet: expected --checkpoint and --queries")
    if args.workers > 1 or args.ray_address or args.storage:
        raise SearchError("--rounds runs in one process: --workers, --ray-address and --storage are for one-shot search")
    from hwnas.search_rounds import check_rounds

    check_rounds(args.rounds, args.queries, args.seed_size, args.model)


def _search(args) -> int:
    start = time.time()
    _check_mode(args)
    check_count(args.trials, "--trials")
    check_count(args.workers, "--workers")
    check_count(args.population, "--population")
    check_count(args.batch_size, "--batch-size")
    check_count(args.verify_top, "--verify-top")
    check_count(args.eval_limit, "--eval-limit")
    check_count(args.calib_batches, "--calib-batches")
    check_count(args.calib_batch_size, "--calib-batch-size")
    storage_url(args.storage)  # a malformed storage fails now, not after loading everything
    if args.ray_address:
        from search._ray import check_address

        check_address(args.ray_address)  # nothing there: one line in seconds, not a hang after loading
    table_specs = parse_table_args(args.table)
    if (args.dataset or args.data) and not args.checkpoint:
        raise SearchError("--dataset/--data re-evaluate accuracy on a supernet: pass --checkpoint too")
    from search_space.io import check_out_dir

    out = check_out_dir(args.out)

    space = SearchSpace.from_config(args.space)
    tables = load_tables(table_specs, space)
    budgets = [parse_budget(b, list(tables)) for b in args.budget]
    if args.rounds is not None:
        from hwnas.search_rounds import search_in_rounds

        search_in_rounds(space, tables, budgets, out, checkpoint=args.checkpoint, queries=args.queries,
                         rounds=args.rounds, seed_size=args.seed_size, model=args.model, trials=args.trials,
                         sampler=args.sampler, seed=args.seed, accuracy_dataset=args.accuracy_dataset,
                         objectives=args.objective, dataset=args.dataset, data=args.data,
                         eval_device=args.eval_device, eval_limit=args.eval_limit, calib_batches=args.calib_batches,
                         calib_batch_size=args.calib_batch_size, verify=not args.no_verify,
                         verify_top=args.verify_top, progress=not args.quiet, start=start)
        return 0
    return search_and_verify(space, tables, budgets, out, predictor=args.predictor, trials=args.trials,
                             sampler=args.sampler, seed=args.seed, population=args.population,
                             batch_size=args.batch_size, workers=args.workers, ray_address=args.ray_address,
                             storage=args.storage, study=args.study, objectives=args.objective,
                             verify=not args.no_verify, verify_top=args.verify_top, checkpoint=args.checkpoint,
                             dataset=args.dataset, data=args.data, eval_device=args.eval_device,
                             eval_limit=args.eval_limit, calib_batches=args.calib_batches,
                             calib_batch_size=args.calib_batch_size, progress=not args.quiet, start=start,
                             stall_timeout=args.stall_timeout)
