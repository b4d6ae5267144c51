"""Measuring blocks and whole networks in chunks (interleaved rounds within a chunk).

Chunks bound memory (every module of a chunk is prepared before the rounds start) and
are the unit of resumable progress: callers save after each one.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from search_space import Arch, BlockSpec, SearchSpace, Subnet, UserError, build_block

from ._progress import progress
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
                     desc: str | None = None) -> Iterator[tuple[Arch, TimingStats]]:
    """Yield ``(arch, stats)`` for each arch, measured end to end as a static subnet."""
    bar = progress(len(archs), desc) if desc else None
    try:
        for i in range(0, len(archs), chunk):
            part = archs[i:i + chunk]
            nets = [(Subnet(a, space.block_specs(a)), (space.config.in_channels, a.resolution, a.resolution))
                    for a in part]
            stats = backend.measure_many(nets)
            if bar:
                bar.update(len(part))
            yield from zip(part, stats)
    finally:
        if bar:
            bar.close()


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
