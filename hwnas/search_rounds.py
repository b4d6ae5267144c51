"""Search in rounds (``hwnas search --rounds``, the pipeline's search stage with ``search.rounds``):
accuracy measured on the supernet in rounds (see :func:`search.search_rounds`), latency from the
tables; the fronts hold measured subnets only."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from hwnas.searching import (EXTRA_OBJECTIVES, CheckpointAccuracy, check_count, local_devices,
                             reachable_devices)
from search import (SearchError, format_fronts, measured_accuracy, measured_latency, search_rounds, table_latency,
                    verify_fronts, write_report)
from search._rounds import DEFAULT_INNER_TRIALS, DEFAULT_LOCAL_SHARE
from search_space import SearchSpace
from search_space.io import atomic_write_json


def check_rounds(rounds: int, queries: int, seed_size: int | None, model: str) -> None:
    """Refuse, in one line and before any work, rounds settings that cannot run."""
    for value, option in ((rounds, "--rounds"), (queries, "--queries"), (seed_size, "--seed-size")):
        check_count(value, option)
    from predictors import PREDICTORS

    if model not in PREDICTORS:
        raise SearchError(f"--model {model!r} is unknown: expected one of {sorted(PREDICTORS)}")


def _known(paths: str | Sequence[str] | None, space, checkpoint: str) -> dict:
    """Subnets of accuracy datasets of the same space and checkpoint: arch -> (accuracy,)."""
    from predictors import AccuracyDataset
    from search_space import checkpoint_hash

    known: dict = {}
    for path in [paths] if isinstance(paths, str) else paths or []:
        data = AccuracyDataset.load(path)
        data.check_space(space)
        if data.header.get("checkpoint_hash") != checkpoint_hash(checkpoint):
            raise SearchError(f"--accuracy-dataset {path!r} was measured on checkpoint {data.header.get('checkpoint_hash')!r}, "
                              f"not on --checkpoint {checkpoint!r} ({checkpoint_hash(checkpoint)}): expected the same checkpoint")
        known.update({a: (y,) for a, y in zip(data.archs(space), data.accuracies())})
    return known


def search_in_rounds(space: SearchSpace, tables: dict, budgets: list, out: Path, *, checkpoint: str, queries: int,
                     rounds: int, seed_size: int | None = None, model: str = "gbt", trials: int | None = None,
                     sampler: str = "nsga2", seed: int = 0, accuracy_dataset: str | Sequence[str] | None = None,
                     objectives: Sequence[str] = (), dataset: str | None = None, data: str | None = None,
                     eval_device: str = "auto", eval_limit: int | None = None, calib_batches: int = 20,
                     calib_batch_size: int = 256, verify: bool = True, verify_top: int = 12, progress: bool = True,
                     start: float | None = None) -> dict:
    """``hwnas search --rounds``, its options as arguments: measure ``queries`` subnets of
    ``checkpoint`` (on ``dataset``, as :class:`CheckpointAccuracy` does) in ``rounds``, the subnets of
    ``accuracy_dataset`` (one path or several) known beforehand; write the report to ``out`` (fronts, every measured subnet
    in measured.json), re-measure the fronts' latency on the devices reachable from here, print the
    fronts. Returns the run's record (measured.json's ``run``)."""
    from search_space import load_supernet

    start = time.time() if start is None else start
    check_rounds(rounds, queries, seed_size, model)
    load_supernet(checkpoint, space)  # missing, corrupt or another space's checkpoint: fail now
    known = _known(accuracy_dataset, space, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    # The measurement cache file is also measure_accuracy_dataset's resume file: a re-run reuses it.
    evaluate = measured_accuracy(CheckpointAccuracy(checkpoint, str(out / "measured_accuracy.jsonl"), dataset, data,
                                                    eval_device, eval_limit, calib_batches, calib_batch_size))
    costs = ([table_latency(t, d) for d, t in tables.items()]
             + [EXTRA_OBJECTIVES[name](space) for name in dict.fromkeys(objectives)])
    inner_trials = trials or DEFAULT_INNER_TRIALS
    run = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "space": f"{space.name} ({space.fingerprint})", "mode": "rounds", "checkpoint": checkpoint,
           "tables": {d: f"{t.path} ({t.backend_spec}, batch {t.batch_size}, {t.dtype})" for d, t in tables.items()},
           "budgets_ms": {b.objective: b.limit for b in budgets}, "queries": queries, "rounds": rounds,
           "seed_size": seed_size, "model": model, "inner_trials": inner_trials,
           "sampler": sampler, "seed": seed, "known": len(known), "local_share": DEFAULT_LOCAL_SHARE}

    def save(result) -> None:
        atomic_write_json(out / "measured.json", {"run": run, "log": result.log, "points": result.records()})

    result = search_rounds(space, [evaluate], costs, queries, budgets=budgets, predictor=model, seed_size=seed_size,
                           rounds=rounds, inner_trials=inner_trials, sampler=sampler, seed=seed, known=known,
                           local_share=DEFAULT_LOCAL_SHARE,
                           progress=progress, on_round=save)
    run.update(measured=int((result.round_of >= 0).sum()), search_seconds=round(time.time() - start, 1))
    save(result)
    trials = result.trials()
    fronts = result.fronts(space)
    write_report(out, trials, fronts, run)
    if verify:
        measure = {d: measured_latency(tables[d], space, d)
                   for d in reachable_devices(tables, local_devices(tables), use_ray=False)}
        if measure:
            verify_fronts(fronts, measure=measure, max_candidates=verify_top)
            run["total_seconds"] = round(time.time() - start, 1)
            write_report(out, trials, fronts, run)
    print(format_fronts(fronts))
    print(f"wrote {out}/measured.json, pareto_<device>.json, front_<device>.png, summary.md "
          f"({run['measured']} subnets measured, {time.time() - start:.1f} s)")
    return run
