"""Measuring blocks and whole networks in chunks (interleaved rounds within a chunk).

Chunks bound memory (every module of a chunk is prepared before the rounds start) and
are the unit of resumable progress: callers save after each one.

Whole networks are measured in several passes over the whole list (minutes apart) and a
network's latency is the minimum over its passes: interference from other processes only
ever adds time, and on the shared development VM it can slow a whole pass of ~2 minutes
(re-measuring 100 nets: 46% within +-10% of the first pass, the later pass 10% slower on
average; see ``experiments/results/latency/latency_cpu_notes.md``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from search_space import Arch, BlockSpec, SearchSpace, Subnet, UserError, build_block

from ._progress import progress
from .artifacts import make_artifacts, supports_artifacts
from .timing import TimingStats

BLOCK_CHUNK = 40
NET_CHUNK = 20


def measure_blocks(backend, specs: Sequence[BlockSpec], chunk: int = BLOCK_CHUNK, desc: str = "blocks",
                   done: int = 0, total: int | None = None) -> Iterator[list[tuple[BlockSpec, TimingStats]]]:
    """Yield ``[(spec, stats), ...]`` per chunk of ``specs`` (each block timed alone)."""
    bar = progress(total if total is not None else len(specs), desc, initial=done)
    try:
        for i in range(0, len(specs), chunk):
            part = specs[i:i + chunk]
            stats = backend.measure_many([(build_block(s), (s.c_in, s.size, s.size)) for s in part])
            bar.update(len(part))
            yield list(zip(part, stats))
    finally:
        bar.close()


def measure_networks(backend, space: SearchSpace, archs: Sequence[Arch], chunk: int = NET_CHUNK,
                     desc: str | None = None, artifacts: dict | None = None) -> Iterator[tuple[Arch, TimingStats]]:
    """Yield ``(arch, stats)`` for each arch, measured end to end as a static subnet (prepared from
    ``artifacts[str(arch)]`` where given, see :mod:`latency_tables.artifacts`)."""
    bar = progress(len(archs), desc) if desc else None
    try:
        for i in range(0, len(archs), chunk):
            part = archs[i:i + chunk]
            shapes = [(space.config.in_channels, a.resolution, a.resolution) for a in part]
            if artifacts is not None:
                stats = backend.time_timers([backend.prepare_artifact(artifacts[str(a)], s) for a, s in zip(part, shapes)])
            else:
                stats = backend.measure_many([(Subnet(a, space.block_specs(a)), s) for a, s in zip(part, shapes)])
            if bar:
                bar.update(len(part))
            yield from zip(part, stats)
    finally:
        if bar:
            bar.close()


def passes_ms(passes: list[dict]) -> float:
    """A network's latency from its passes (``TimingStats`` JSON each): the minimum estimate."""
    return min(TimingStats.from_json(s).ms for s in passes)


def measure_passes(backend, space: SearchSpace, archs: Sequence[Arch], passes: int, done: dict[str, list],
                   save, chunk: int = NET_CHUNK, desc: str = "nets") -> dict[str, list]:
    """Measure each arch ``passes`` times, one pass over all archs after the other.

    ``done`` maps arch strings to the passes (stats JSON) already measured and is updated in
    place; ``save()`` is called after every chunk, so an interrupted run resumes. A backend with
    artifacts (ONNX Runtime) has every net exported once, in parallel, before the first pass.
    """
    import tempfile

    left = [a for a in archs if len(done.get(str(a), [])) < passes]
    with tempfile.TemporaryDirectory(prefix="hwnas-nets-") as tmp:
        artifacts = (make_artifacts(backend, space, left, tmp, desc=f"{desc}: exports")
                     if left and supports_artifacts(backend) else None)
        for p in range(passes):
            todo = [a for a in archs if len(done.get(str(a), [])) <= p]
            nets = measure_networks(backend, space, todo, chunk, desc=f"{desc}, pass {p + 1}/{passes}",
                                    artifacts=artifacts)
            for k, (a, st) in enumerate(nets, 1):
                done.setdefault(str(a), []).append(st.to_json())
                if k % chunk == 0 or k == len(todo):
                    save()
    return done


def sample_archs(space: SearchSpace, n: int, seed: int, exclude: set[str] = frozenset(),
                 anchors: bool = False) -> list[Arch]:
    """``n`` distinct random archs not in ``exclude`` (as strings); ``anchors`` puts the
    smallest and largest arch first so a calibration covers the extremes a search reaches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, seen = [], set(exclude)
    if anchors:
        for a in (space.smallest(), space.largest()):
            if str(a) not in seen and len(out) < n:
                out.append(a)
                seen.add(str(a))
    tries = 0
    while len(out) < n:
        a = space.sample(rng)
        tries += 1
        if str(a) not in seen:
            out.append(a)
            seen.add(str(a))
        elif tries > 100 * n:
            raise UserError(f"n={n}: space {space.name!r} has fewer distinct archs outside the {len(exclude)} "
                            f"excluded ones; expected a smaller n")
    return out
