"""Shared set-up of the search benchmarks: the scored setting (space, predictor, latency tables)
and the facts every result records (machine, load, versions, peak RSS).

The setting is the real one when files are given (``--predictor``, ``--table NAME=PATH``; the
shipped tables in ``latency_tables/tables`` are used by default). Until the project ships a
cifar predictor and tables, a *stand-in* is built, documented here and in every result:

- tables: complete ``LatencyTable`` files whose block latencies come from a roofline-style
  cost model, not from measurement: ``ms = kernels * launch + FLOPs / (peak * efficiency[type])
  + bytes / bandwidth``, with per-device constants for ``cpu`` (ORT, 1 thread: FLOP-bound,
  depthwise at 30% efficiency), ``gpu_b1`` (launch-bound) and ``gpu_b256`` (throughput-bound,
  depthwise at 5% efficiency), so the three devices disagree about which blocks are cheap;
- predictor (when ``--predictor`` is not given): the project's GP predictor fitted on 300 synthetic accuracies
  ``0.97 - 0.45 * exp(-capacity)``, capacity growing with log-FLOPs and depth, with a per-type
  bonus and deterministic noise (sd 0.005).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from search_space import SearchSpace

RESULTS = Path(__file__).parent / "results"

# device: (launch ms per kernel, peak GFLOP/s, efficiency per type, GB/s, batch)
STAND_IN_DEVICES = {
    "cpu": (0.004, 25.0, {"mbconv": 0.3, "pconv": 0.6, "fused_mbconv": 0.9, "resnet": 0.9}, 15.0, 1),
    "gpu_b1": (0.012, 60_000.0, {"mbconv": 0.05, "pconv": 0.2, "fused_mbconv": 0.5, "resnet": 0.5}, 2_000.0, 1),
    "gpu_b256": (0.012, 200_000.0, {"mbconv": 0.05, "pconv": 0.25, "fused_mbconv": 0.45, "resnet": 0.5}, 3_000.0, 256),
}
KERNELS = {"mbconv": 3, "fused_mbconv": 2, "pconv": 3, "resnet": 2, "stem": 1, "head": 2}
TYPE_BONUS = {"mbconv": 0.10, "fused_mbconv": 0.05, "pconv": 0.0, "resnet": 0.02}


def add_setting_args(p: argparse.ArgumentParser) -> None:
    """``--predictor`` and ``--table`` (repeatable): the real setting; absent: the stand-in."""
    p.add_argument("--predictor", default=None, help="predictor file (default: the stand-in GP, see module doc)")
    p.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help="latency table per device (default: shipped cifar tables, else the stand-ins)")


def stand_in_block_ms(spec, device: str) -> float:
    """The stand-in cost model of one block on one device (ms)."""
    launch, peak, eff, bw, batch = STAND_IN_DEVICES[device]
    out = spec.out_size
    acts = spec.c_in * spec.size ** 2 + 2 * max(spec.mid, 1) * out ** 2 + spec.c_out * out ** 2
    bytes_ = 4 * (batch * acts + spec.params())
    flop_ms = batch * spec.flops() / (peak * 1e9 * eff.get(spec.block, 0.5)) * 1e3
    return KERNELS.get(spec.block, 2) * launch + flop_ms + bytes_ / (bw * 1e9) * 1e3


def stand_in_tables(space: SearchSpace, folder: Path, devices) -> dict:
    """Write and load one stand-in table per stand-in device named."""
    from latency_tables import Calibration, LatencyTable, TimingStats, make_backend

    tables = {}
    for device in devices:
        table = LatencyTable.new(space, make_backend("onnxruntime", batch_size=1, threads=1), device,
                                 command="stand-in: experiments/bench_search_common.py (not measured)")
        for spec in space.unique_block_specs():
            ms = stand_in_block_ms(spec, device)
            table.data["blocks"][spec.key] = TimingStats(ms, ms, 0.0, 1, ms).to_json()
        table.calibration = Calibration()
        tables[device] = LatencyTable.load(table.save(folder / f"standin_{device}.json"), space=space)
    return tables


def stand_in_accuracy(space: SearchSpace, archs) -> np.ndarray:
    """Synthetic accuracy (see module doc)."""
    out = []
    smallest = np.log(space.flops(space.smallest()))
    for a in archs:
        layers = [l for s in a.stages for l in s.layers]
        capacity = 0.9 * (np.log(space.flops(a)) - smallest) + 0.08 * len(layers)
        capacity += sum(TYPE_BONUS[l.block] for l in layers) / len(layers)
        noise = int(hashlib.sha256(str(a).encode()).hexdigest()[:8], 16) / 16 ** 8 - 0.5
        out.append(0.97 - 0.45 * np.exp(-capacity) + 0.01 * noise)
    return np.asarray(out)


def resolve_tables(args, space: SearchSpace) -> list[list[str]]:
    """[name, path] of the real tables to use: ``--table`` options, else the shipped tables of
    the space that are complete (a table still being built is skipped)."""
    from latency_tables import LatencyTable, shipped_tables

    if args.table:
        return [t.split("=", 1) for t in args.table]
    specs = []
    for p in shipped_tables():
        if p.name.startswith(f"{space.name}_"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = LatencyTable.load(p, space=space)
            if table.is_complete:
                taken = {name for name, _ in specs}
                specs.append([table.device if table.device not in taken else p.stem, str(p)])
    return specs


def load_setting(args, space: SearchSpace, folder: Path, min_devices: int = 1):
    """(predictor, tables by device, description): the real predictor and tables where given
    (resolve ``args.table`` with :func:`resolve_tables` first, so every process of a benchmark
    uses the same ones), stand-ins for the rest, at least ``min_devices`` devices."""
    from latency_tables import LatencyTable
    from predictors import load_predictor, make_predictor

    from search_space import checkpoint_hash

    if args.predictor:
        predictor = load_predictor(args.predictor, space)
        pred_desc = f"predictor {args.predictor} (sha256 {checkpoint_hash(args.predictor)})"
    else:
        rng = np.random.default_rng(0)
        archs = [space.sample(rng) for _ in range(300)]
        predictor = make_predictor("gp", space).fit(space.encode_many(archs), stand_in_accuracy(space, archs))
        pred_desc = "stand-in GP predictor fitted on 300 synthetic accuracies"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tables of other machines are expected here
        tables = {name: LatencyTable.load(path, space=space) for name, path in args.table}
    desc = [f"tables {', '.join(f'{n}={p} (sha256 {checkpoint_hash(p)})' for n, p in args.table)}"] if tables else []
    missing = [d for d in STAND_IN_DEVICES if d not in tables][:max(0, min_devices - len(tables))]
    if missing:
        tables.update(stand_in_tables(space, folder, missing))
        desc.append("stand-in tables (roofline cost model, not measured): " + ", ".join(missing))
    return predictor, tables, f"{pred_desc}; {'; '.join(desc)}"


def facts() -> dict:
    """Machine, load and versions, recorded next to every number."""
    import optuna

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": f"{cpu}, {os.cpu_count()} cores",
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "optuna": optuna.__version__, "numpy": np.__version__}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Wall and CPU seconds of a block (CPU time is what a busy shared machine does not distort)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c
