"""Searching Pareto fronts per device against latency tables, verified by measurement: the library
of ``hwnas search`` (its one-shot search; :mod:`hwnas.search_rounds` holds the search in rounds)
and of the pipeline's search stage. Torch is imported only where an accuracy is measured."""

from __future__ import annotations

import re
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from search import (SearchError, Trials, device_fronts, flops_objective, format_fronts, measured_accuracy,
                    measured_latency, params_objective, predicted_accuracy, redact_url, run_search, storage_url,
                    table_latency, verify_fronts, write_report)
from search_space import SearchSpace

DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EXTRA_OBJECTIVES = {"flops": flops_objective, "params": params_objective}


def check_count(value: int | None, option: str) -> None:
    """Reject a non-positive integer option (None: unset, allowed) in one line."""
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
        if not DEVICE_NAME.match(device):
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
