"""The most compute a latency budget buys: architectures of the most FLOPs within a budget.

A supernet scores the subnets inside a tight budget almost alike, while trained alone the ones
with more capacity win: on the H100 at batch 1, width is nearly free, and the 2.4-GFLOP
``r32/w1:cp3e1,rn3e1/w1:cp3e1/w1:cp3e1`` (0.45x ResNet-18's latency) trained to 88.0% where the
supernet's favourites within the same budget reached 87.0% (experiments/results/final/final_cifar_pool.md).
This search finds such candidates from a latency table alone, in about a second.
"""

from __future__ import annotations

import numpy as np


def most_flops_within(space, table, budget_ms: float, n: int = 1, *, seed: int = 0, samples: int = 2000,
                      generations: int = 30, children: int = 400, elite: int = 50) -> list:
    """The ``n`` archs of most FLOPs whose ``table`` latency is within ``budget_ms`` (``space``: a
    :class:`search_space.SearchSpace`, or any space with ``sample``, ``mutate`` and ``flops``).

    Random samples plus the space's extremes seed an elitist mutation search (``generations``
    rounds of ``children`` mutants of the ``elite`` best); ties keep the first found. Returns
    fewer than ``n`` (possibly none) when few archs fit the budget."""
    rng = np.random.default_rng(seed)
    extremes = list(space.extremes().values()) if hasattr(space, "extremes") else []
    flops: dict = {}  # in-budget arch -> FLOPs

    def score(archs) -> None:
        archs = [a for a in dict.fromkeys(archs) if a not in flops]
        if archs:
            for a, ms in zip(archs, table.predict_many(archs)):
                if ms <= budget_ms:
                    flops[a] = space.flops(a)

    score(extremes + [space.sample(rng) for _ in range(samples)])
    for _ in range(generations):
        if not flops:
            break
        best = sorted(flops, key=lambda a: -flops[a])[:elite]
        score([space.mutate(best[rng.integers(len(best))], rng, 0.15) for _ in range(children)])
    return sorted(flops, key=lambda a: -flops[a])[:n]
