"""``hwnas search --rounds``: accuracy measured on the supernet in rounds (see
:func:`search.search_rounds`), latency from the tables; the fronts hold measured subnets only."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from search import (SearchError, format_fronts, measured_accuracy, measured_latency, search_rounds, table_latency,
                    verify_fronts, write_report)
from search._rounds import DEFAULT_INNER_TRIALS
from search_space.io import atomic_write_json


def _known(path: str | None, space, checkpoint: str) -> dict:
    """Subnets of an accuracy dataset of the same space and checkpoint: arch -> (accuracy,)."""
    if path is None:
        return {}
    from predictors import AccuracyDataset
    from search_space import checkpoint_hash

    data = AccuracyDataset.load(path)
    data.check_space(space)
    if data.header.get("checkpoint_hash") != checkpoint_hash(checkpoint):
        raise SearchError(f"--accuracy-dataset {path!r} was measured on checkpoint {data.header.get('checkpoint_hash')!r}, "
                          f"not on --checkpoint {checkpoint!r} ({checkpoint_hash(checkpoint)}): expected the same checkpoint")
    return {a: (y,) for a, y in zip(data.archs(space), data.accuracies())}


def search_in_rounds(args, space, tables: dict, budgets: list, out: Path, start: float) -> int:
    """Run the rounds, write the report (fronts, every measured subnet in measured.json) and
    re-measure the fronts' latency on the devices reachable from here."""
    from hwnas.cli.search import CheckpointAccuracy, EXTRA_OBJECTIVES, local_devices, reachable_devices
    from search_space import load_supernet

    load_supernet(args.checkpoint, space)  # missing, corrupt or another space's checkpoint: fail now
    known = _known(args.accuracy_dataset, space, args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    # The measurement cache file is also measure_accuracy_dataset's resume file: a re-run reuses it.
    evaluate = measured_accuracy(CheckpointAccuracy(args.checkpoint, str(out / "measured_accuracy.jsonl"), args.dataset,
                                                    args.data, args.eval_device, args.eval_limit, args.calib_batches,
                                                    args.calib_batch_size))
    costs = ([table_latency(t, d) for d, t in tables.items()]
             + [EXTRA_OBJECTIVES[name](space) for name in dict.fromkeys(args.objective)])
    run = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "space": f"{space.name} ({space.fingerprint})", "mode": "rounds", "checkpoint": args.checkpoint,
           "tables": {d: f"{t.path} ({t.backend_spec}, batch {t.batch_size}, {t.dtype})" for d, t in tables.items()},
           "budgets_ms": {b.objective: b.limit for b in budgets}, "queries": args.queries, "rounds": args.rounds,
           "seed_size": args.seed_size, "model": args.model, "inner_trials": args.trials or DEFAULT_INNER_TRIALS,
           "sampler": args.sampler, "seed": args.seed, "known": len(known)}

    def save(result) -> None:
        atomic_write_json(out / "measured.json", {"run": run, "log": result.log, "points": result.records()})

    result = search_rounds(space, [evaluate], costs, args.queries, budgets=budgets, predictor=args.model,
                           seed_size=args.seed_size, rounds=args.rounds, inner_trials=args.trials or DEFAULT_INNER_TRIALS,
                           sampler=args.sampler, seed=args.seed, known=known, progress=not args.quiet, on_round=save)
    run.update(measured=int((result.round_of >= 0).sum()), search_seconds=round(time.time() - start, 1))
    save(result)
    trials = result.trials()
    fronts = result.fronts(space)
    write_report(out, trials, fronts, run)
    if not args.no_verify:
        measure = {d: measured_latency(tables[d], space, d)
                   for d in reachable_devices(tables, local_devices(tables), use_ray=False)}
        if measure:
            verify_fronts(fronts, measure=measure, max_candidates=args.verify_top)
            run["total_seconds"] = round(time.time() - start, 1)
            write_report(out, trials, fronts, run)
    print(format_fronts(fronts))
    print(f"wrote {out}/measured.json, pareto_<device>.json, front_<device>.png, summary.md "
          f"({run['measured']} subnets measured, {time.time() - start:.1f} s)")
    return 0
