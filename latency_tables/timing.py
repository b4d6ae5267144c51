"""The timing protocol every backend shares: warm-up, interleaved rounds, robust statistics.

Why interleaved rounds: on a shared machine, load comes and goes over seconds. Timing item A
fully, then item B, lets a burst of load land on one item only. Timing every item a little per
round, over many rounds, spreads bursts evenly over all items.

Why the 10th percentile (``TimingStats.ms``) and not the median: other processes only ever
slow a run down, so the low tail is where the undisturbed runs are. Measured on the 2-core
development VM under load average 5-6 (``experiments/results/latency/latency_cpu_notes.md``): the 10th
percentile of 100 runs repeated within +-10% across separate runs for 100% of 20 nets, the
median for 75%.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

# Percentile of all timed runs that tables use as "the latency" (see module docstring).
ESTIMATE_PERCENTILE = 10

# A prepared module: ``timer(k)`` runs it k times back to back and returns k timings in ms.
Timer = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class TimingStats:
    """Statistics of repeated timings of one module (all in milliseconds).

    ``ms`` (the 10th percentile) is the robust estimate tables store and predict;
    ``median_ms`` and ``p90_ms`` describe the spread a user should expect.
    """

    median_ms: float
    p90_ms: float
    spread: float  # (p90 - p10) / median: relative width of the bulk of the distribution
    n: int
    p10_ms: float

    @property
    def ms(self) -> float:
        """The latency estimate tables use (10th percentile of all timed runs)."""
        return self.p10_ms

    @classmethod
    def from_samples(cls, samples_ms) -> "TimingStats":
        """Summarise raw timings (ms)."""
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no timings to summarise")
        p10, med, p90 = np.percentile(s, [ESTIMATE_PERCENTILE, 50, 90])
        return cls(float(med), float(p90), float((p90 - p10) / med), int(s.size), float(p10))

    def to_json(self) -> dict:
        """Plain data (rounded to 0.1 us)."""
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "TimingStats":
        """Inverse of :meth:`to_json`."""
        return cls(float(d["median_ms"]), float(d["p90_ms"]), float(d["spread"]), int(d["n"]), float(d["p10_ms"]))


@dataclass(frozen=True)
class TimingPlan:
    """How long to time: rounds, runs per round and when an estimate counts as stable."""

    min_rounds: int = 8
    max_rounds: int = 24
    round_ms: float = 10.0  # target time per item and round; sets the runs per round
    max_runs_per_round: int = 50
    min_runs_per_round: int = 3
    warmup_ms: float = 20.0
    tol: float = 0.02  # stable when the estimate moved less than this over the last half of the rounds
    nice: int = 0  # scheduling priority while timing (negative: other processes preempt it less; needs root)

    def to_json(self) -> dict:
        """Plain data, stored with every table so that re-measurements use the same plan."""
        return asdict(self)


@contextmanager
def scheduling_priority(nice: int) -> Iterator[None]:
    """Run the block at ``nice`` (Linux: applies to the calling thread, which is where ONNX
    Runtime computes with 1 intra-op thread); restores the previous value. Without the right
    to raise priority it warns and times at normal priority."""
    if not nice or not hasattr(os, "setpriority"):
        yield
        return
    old = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        warnings.warn(f"cannot set scheduling priority nice={nice} ({e.strerror}): timing at normal priority, "
                      f"expect more noise", RuntimeWarning, stacklevel=3)
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, old)


TIMING_LOCK_ENV = "HWNAS_TIMING_LOCK"


def timing_lock_path() -> str:
    """The host's timing lock file: ``$HWNAS_TIMING_LOCK``, else ``hwnas-timing.lock`` in the temp folder."""
    return os.environ.get(TIMING_LOCK_ENV) or os.path.join(tempfile.gettempdir(), "hwnas-timing.lock")


@contextmanager
def host_timing_lock(cpu: bool) -> Iterator[None]:
    """Keep CPU timing apart from GPU timing on this host, across processes (``flock`` on files
    named after :func:`timing_lock_path`): no CPU chunk is timed while a GPU chunk is, and the other
    way round (a GPU job's host threads would slow the CPU's timings), but chunks of one kind run
    at once: several GPUs, or CPU devices on cores of their own. Each kind holds its own file shared
    while timing; a newcomer checks, under a short gate lock, that the other kind's file is free. A
    plain line on stderr says when it waits. Where file locks are unavailable it does nothing."""
    base = timing_lock_path()
    try:
        import fcntl

        gate, mine, other = (os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                             for path in (base, f"{base}.{'cpu' if cpu else 'gpu'}", f"{base}.{'gpu' if cpu else 'cpu'}"))
    except (ImportError, OSError):
        yield
        return
    try:
        waited = False
        while True:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only if the other kind is idle
            except BlockingIOError:
                fcntl.flock(gate, fcntl.LOCK_UN)
                if not waited:
                    print(f"waiting for {'GPU' if cpu else 'CPU'} timing on this host to finish (lock {base})",
                          file=sys.stderr, flush=True)
                    waited = True
                fcntl.flock(other, fcntl.LOCK_EX)  # until it is; then check again under the gate
                fcntl.flock(other, fcntl.LOCK_UN)
                continue
            fcntl.flock(other, fcntl.LOCK_UN)
            fcntl.flock(mine, fcntl.LOCK_SH)  # taken before the gate opens: the other kind now waits
            fcntl.flock(gate, fcntl.LOCK_UN)
            break
        yield
    finally:
        for fd in (gate, mine, other):
            os.close(fd)  # closing releases its locks


def _estimate(samples: list[np.ndarray]) -> float:
    return float(np.percentile(np.concatenate(samples), ESTIMATE_PERCENTILE))


def time_interleaved(timers: Sequence[Timer], plan: TimingPlan = TimingPlan()) -> list[TimingStats]:
    """Time every prepared module in interleaved rounds until its estimate is stable.

    Each timer is warmed up first (its first runs allocate memory and pick kernels), then
    every round runs each unfinished item ``k`` times, alternating the order of items
    between rounds. An item stops after ``min_rounds`` once its estimate over all rounds and
    over the first half of the rounds differ by less than ``plan.tol``, or at ``max_rounds``.
    """
    samples: list[list[np.ndarray]] = [[] for _ in timers]
    with scheduling_priority(plan.nice):
        runs = [_warm_up(t, plan) for t in timers]
        _rounds(timers, runs, samples, plan)
    return [TimingStats.from_samples(np.concatenate(s)) for s in samples]


def _warm_up(timer: Timer, plan: TimingPlan) -> int:
    """Run ``timer`` for about ``warmup_ms``; return the runs per round that fill ``round_ms``."""
    est = float(np.min(timer(3)))
    extra = int(np.ceil(plan.warmup_ms / max(est, 1e-3)))
    if extra > 0:
        est = float(np.median(timer(min(extra, 10 * plan.max_runs_per_round))))
    return int(np.clip(np.ceil(plan.round_ms / max(est, 1e-4)), plan.min_runs_per_round, plan.max_runs_per_round))


def _rounds(timers: Sequence[Timer], runs: list[int], samples: list[list[np.ndarray]], plan: TimingPlan) -> None:
    active = list(range(len(timers)))
    for r in range(plan.max_rounds):
        for i in (active if r % 2 == 0 else active[::-1]):
            samples[i].append(np.asarray(timers[i](runs[i]), dtype=np.float64))
        if r + 1 >= plan.min_rounds:
            half = (r + 1) // 2
            active = [i for i in active
                      if abs(_estimate(samples[i]) / _estimate(samples[i][:half]) - 1) > plan.tol]
            if not active:
                break
