"""Which subnets to measure: spread over the FLOPs range and over block-type mixtures.

Uniform sampling concentrates on mid-sized networks with every block type mixed in every
stage, yet a search visits the extremes (tiny nets, big nets) and pure stages (an all
fused-MBConv stage for a GPU). So candidates come half from uniform sampling and half from
a generator with one size knob for the whole net and a block-type mixture per stage
(often a single type), then are drawn round-robin from equal-width bins of log FLOPs.
"""

from __future__ import annotations

import numpy as np

from search_space import Arch, LayerChoice, SearchSpace, StageChoice


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _biased_index(m: int, size: float, rng: np.random.Generator) -> int:
    """An index into ``m`` sorted choices near ``size`` * (m - 1), with some jitter."""
    return int(np.clip(np.rint(size * (m - 1) + rng.normal(0.0, 0.5)), 0, m - 1))


def sample_mixture_arch(space: SearchSpace, rng=None) -> Arch:
    """One arch from the size-and-mixture generator: a global size in [0, 1] biases every
    depth, width, kernel, expansion and the resolution; each stage draws its layers' block
    types from its own mixture (a single type half the time, else Dirichlet weights)."""
    rng = _rng(rng)
    cfg = space.config
    size = rng.random()
    stages = []
    for st in cfg.stages:
        blocks = st.blocks
        if rng.random() < 0.5:
            weights = np.eye(len(blocks))[rng.integers(len(blocks))]
        else:
            weights = rng.dirichlet(np.full(len(blocks), 0.5))
        layers = []
        for _ in range(st.depths[_biased_index(len(st.depths), size, rng)]):
            b = blocks[rng.choice(len(blocks), p=weights)]
            exps = st.expansions[b]
            layers.append(LayerChoice(b, st.kernels[_biased_index(len(st.kernels), size, rng)],
                                      exps[_biased_index(len(exps), size, rng)]))
        stages.append(StageChoice(st.widths[_biased_index(len(st.widths), size, rng)], tuple(layers)))
    res = cfg.resolutions[_biased_index(len(cfg.resolutions), size, rng)]
    return space.validate(Arch(res, tuple(stages)))


def sample_archs_spread(space: SearchSpace, n: int, rng=None, bins: int = 10, pool_factor: int = 8) -> list[Arch]:
    """``n`` distinct archs spread over the FLOPs range and block types (fewer only if the
    space has fewer). Drawn round-robin over ``bins`` log-FLOPs bins, so every prefix of the
    list is spread too: a time-budgeted run that stops early keeps a spread set."""
    rng = _rng(rng)
    pool: dict[str, Arch] = {}
    misses = 0
    # Stop early when new draws keep colliding (a tiny space has fewer distinct archs).
    while len(pool) < pool_factor * n and misses < 20 * pool_factor * n:
        a = space.sample(rng) if rng.random() < 0.5 else sample_mixture_arch(space, rng)
        key = str(a)
        misses += key in pool
        pool.setdefault(key, a)
    archs = list(pool.values())
    log_flops = np.log([space.flops(a) for a in archs])
    lo, hi = np.log(space.flops(space.smallest())), np.log(space.flops(space.largest()))
    which = np.clip(((log_flops - lo) / max(hi - lo, 1e-12) * bins).astype(int), 0, bins - 1)
    members = [list(rng.permutation(np.flatnonzero(which == b))) for b in range(bins)]
    out: list[Arch] = []
    while len(out) < min(n, len(archs)):
        for b in rng.permutation(bins):
            if members[b] and len(out) < n:
                out.append(archs[members[b].pop()])
    return out
