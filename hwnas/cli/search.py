"""``hwnas search``: multi-objective search (predicted accuracy vs latency per device), verified
by measurement, written as one Pareto front per device."""

from __future__ import annotations

import re
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from hwnas.cli._group import add_command
from hwnas.cli.space import add_space_arg
from search import (SAMPLERS, SearchError, Trials, device_fronts, flops_objective, format_fronts, measured_accuracy,
                    measured_latency, params_objective, parse_budget, predicted_accuracy, redact_url, run_search,
                    storage_url, table_latency, verify_fronts, write_report)
from search._rounds import DEFAULT_INNER_TRIALS
from search_space import SearchSpace

_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EXTRA_OBJECTIVES = {"flops": flops_objective, "params": params_objective}


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
    r.add_argument("--accuracy-dataset", default=None,
                   help="accuracy dataset of the same checkpoint ('hwnas predictor dataset'): its subnets count as "
                        "measured and cost no query")
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
        elif not _DEVICE_RE.match(name):
            raise SearchError(f"--table {spec!r}: device name {name!r} is invalid: expected letters, digits, '_', '.', '-'")
        if not path:
            raise SearchError(f"--table {spec!r} names no table: expected [DEVICE=]PATH")
        out.append((name, path))
    return out


def _positive(value, option: str) -> None:
    if value is not None and value < 1:
        raise SearchError(f"{option} {value} is invalid: expected an integer >= 1")


def load_tables(specs: list[tuple[str | None, str]], space: SearchSpace) -> dict:
    """Device name -> LatencyTable, each checked against ``space``; another space's table is refused."""
    from latency_tables import LatencyTable

    tables = {}
    for name, path in specs:
        # A remote device's table is expected to differ from this machine (local_devices tells which).
        table = LatencyTable.load(path, space=space, check_machine=False)
        device = name or table.device
        if not _DEVICE_RE.match(device):
            raise SearchError(f"latency table {path!r} has device label {device!r}: name it with --table NAME={path}")
        if device in tables:
            raise SearchError(f"device {device!r} has two --table options: expected one table per device")
        tables[device] = table
    return tables


def local_devices(tables: dict) -> list[str]:
    """Devices whose table was measured on this machine (same relevant fingerprint fields)."""
    from latency_tables import FingerprintWarning

    here = []
    for device, table in tables.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FingerprintWarning)
            if not table.check_machine():
                here.append(device)
    return here


class CheckpointAccuracy:
    """Accuracy of archs on a supernet checkpoint, BN recalibrated, measured as
    ``hwnas predictor dataset`` measures it (val split), cached in a resumable .jsonl file.
    Picklable: it loads the checkpoint and dataset in whichever process it runs."""

    def __init__(self, checkpoint: str, out: str, dataset: str | None, data: str | None, device: str,
                 eval_limit: int | None, calib_batches: int = 20, calib_batch_size: int = 256):
        self.checkpoint, self.out, self.dataset, self.data = checkpoint, out, dataset, data
        self.device, self.eval_limit = device, eval_limit
        self.calib_batches, self.calib_batch_size = calib_batches, calib_batch_size

    def __call__(self, archs):
        from hwnas.accuracy import measure_accuracy_dataset

        ds = measure_accuracy_dataset(self.checkpoint, list(archs), self.out, dataset=self.dataset, data=self.data,
                                      device=self.device, eval_limit=self.eval_limit, calib_batches=self.calib_batches,
                                      calib_batch_size=self.calib_batch_size, progress=False)
        acc = {r["arch"]: r["accuracy"] for r in ds.records}
        return [acc[str(a)] for a in archs]


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
    for value, option in ((args.rounds, "--rounds"), (args.queries, "--queries"), (args.seed_size, "--seed-size")):
        _positive(value, option)
    from predictors import PREDICTORS

    if args.model not in PREDICTORS:
        raise SearchError(f"--model {args.model!r} is unknown: expected one of {sorted(PREDICTORS)}")


def _search(args) -> int:
    start = time.time()
    _check_mode(args)
    _positive(args.trials, "--trials")
    _positive(args.workers, "--workers")
    _positive(args.population, "--population")
    _positive(args.batch_size, "--batch-size")
    _positive(args.verify_top, "--verify-top")
    _positive(args.eval_limit, "--eval-limit")
    _positive(args.calib_batches, "--calib-batches")
    _positive(args.calib_batch_size, "--calib-batch-size")
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
        from hwnas.cli.search_rounds import search_in_rounds

        return search_in_rounds(args, space, tables, budgets, out, start)
    return search_and_verify(space, tables, budgets, out, predictor=args.predictor, trials=args.trials,
                             sampler=args.sampler, seed=args.seed, population=args.population,
                             batch_size=args.batch_size, workers=args.workers, ray_address=args.ray_address,
                             storage=args.storage, study=args.study, objectives=args.objective,
                             verify=not args.no_verify, verify_top=args.verify_top, checkpoint=args.checkpoint,
                             dataset=args.dataset, data=args.data, eval_device=args.eval_device,
                             eval_limit=args.eval_limit, calib_batches=args.calib_batches,
                             calib_batch_size=args.calib_batch_size, progress=not args.quiet, start=start,
                             stall_timeout=args.stall_timeout)


def search_and_verify(space: SearchSpace, tables: dict, budgets: list, out: Path, *, predictor: str, trials: int,
                      sampler: str = "nsga2", seed: int = 0, population: int | None = None,
                      batch_size: int | None = None, workers: int = 1, ray_address: str | None = None,
                      storage: str | None = None, study: str | None = None, objectives: Sequence[str] = (),
                      verify: bool = True, verify_top: int = 12, checkpoint: str | None = None,
                      dataset: str | None = None, data: str | None = None, eval_device: str = "auto",
                      eval_limit: int | None = None, calib_batches: int = 20, calib_batch_size: int = 256,
                      progress: bool = True, start: float | None = None,
                      stall_timeout: float | None = None) -> int:
    """``hwnas search`` without --rounds, its options as arguments (``tables``: device -> table,
    from :func:`load_tables`): search the predictor against every table, with ``workers`` Ray
    workers (or on the cluster at ``ray_address``) on ``storage``, write the fronts to ``out``,
    re-measure them on the devices that are reachable (and their accuracy on ``checkpoint``);
    prints the fronts. Returns 0."""
    from predictors import load_predictor

    start = time.time() if start is None else start
    accuracy = load_predictor(predictor, space)
    if checkpoint:
        from search_space import load_supernet

        load_supernet(checkpoint, space)  # missing, corrupt or another space's checkpoint: fail now
    objs = ([predicted_accuracy(accuracy, space)] + [table_latency(t, d) for d, t in tables.items()]
            + [EXTRA_OBJECTIVES[name](space) for name in dict.fromkeys(objectives)])

    here = local_devices(tables)
    use_ray = workers > 1 or bool(ray_address)
    if use_ray:
        from search import init_ray

        init_ray(ray_address, local_devices=here)
    out.mkdir(parents=True, exist_ok=True)
    if use_ray:  # for `hwnas status`: the dashboard link and the nodes
        from hwnas.run_status import record_cluster

        record_cluster(out)
    if workers > 1 and storage is None:
        storage = str(out / "study.journal")  # workers need a storage they can all open
        print(f"storage: {storage}")
    found = run_search(space, objs, trials, budgets=budgets, sampler=sampler, seed=seed, population_size=population,
                       storage=storage, study_name=study, workers=workers, ray_address=ray_address,
                       batch_size=batch_size, progress=progress, seed_archs=list(space.extremes().values()),
                       **({} if stall_timeout is None else {"stall_timeout": stall_timeout}))
    search_s = time.time() - start
    done = Trials.from_study(found)
    fronts = device_fronts(done, space)
    run = _run_info(space, tables, budgets, done, found, search_s, predictor=predictor, sampler=sampler, seed=seed,
                    storage=storage, workers=workers)
    write_report(out, done, fronts, run)  # the search's result is safe before the (slow) verification
    if verify:
        reachable = reachable_devices(tables, here, use_ray)
        measure = {d: measured_latency(tables[d], space, d) for d in reachable}
        evaluate = None
        if checkpoint and ray_address:  # the checkpoint travels to the node measuring; the records come back
            from hwnas.cluster import ClusterCheckpointAccuracy

            evaluate = measured_accuracy(ClusterCheckpointAccuracy(
                space, checkpoint, out / "verified_accuracy.jsonl", gpu=eval_device.startswith("cuda"),
                settings=dict(dataset=dataset, data=data, eval_limit=eval_limit, calib_batches=calib_batches,
                              calib_batch_size=calib_batch_size)))
        elif checkpoint:
            resources = {"GPU": 1} if use_ray and eval_device.startswith("cuda") else {"CPU": 1}
            evaluate = measured_accuracy(CheckpointAccuracy(checkpoint, str(out / "verified_accuracy.jsonl"),
                                                            dataset, data, eval_device, eval_limit,
                                                            calib_batches, calib_batch_size),
                                         resources=resources if use_ray else None)
        verify_fronts(fronts, measure=measure, evaluate=evaluate, max_candidates=verify_top, use_ray=use_ray)
        run["total_seconds"] = round(time.time() - start, 1)
        write_report(out, done, fronts, run)
    print(format_fronts(fronts))
    print(f"wrote {out}/pareto_<device>.json, front_<device>.png, hypervolume.png, summary.md "
          f"({len(done)} trials, {time.time() - start:.1f} s)")
    return 0


def reachable_devices(tables: dict, here: list[str], use_ray: bool) -> list[str]:
    """Devices whose latency can be measured: with Ray, those with a ``device:NAME`` node;
    without, those whose table was measured on this machine."""
    if not use_ray:
        return [d for d in tables if d in here]
    from search import cluster_devices

    on_cluster = cluster_devices()
    return [d for d in tables if d in on_cluster]


def _run_info(space, tables, budgets, trials, study, search_s: float, *, predictor, sampler, seed, storage,
              workers) -> dict:
    """The settings and provenance recorded in every output of the run."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "space": f"{space.name} ({space.fingerprint})", "predictor": predictor,
            "tables": {d: f"{t.path} ({t.backend_spec}, batch {t.batch_size}, {t.dtype})" for d, t in tables.items()},
            "budgets_ms": {b.objective: b.limit for b in budgets}, "trials": len(trials), "sampler": sampler,
            "seed": seed, "storage": redact_url(storage_url(storage)), "study": study.study_name,
            "workers": workers, "search_seconds": round(search_s, 1)}
