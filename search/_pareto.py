"""Two-objective Pareto fronts (maximise quality, minimise cost) and their hypervolume."""

from __future__ import annotations

import numpy as np


def pareto_front_2d(quality, cost) -> np.ndarray:
    """Indices of the non-dominated points, by increasing cost (ties keep the first best point)."""
    quality, cost = np.asarray(quality, float), np.asarray(cost, float)
    if quality.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-quality, cost))  # by cost, the best quality first among equal costs
    q = quality[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    return order[q > best_before]


def hypervolume_2d(quality, cost, ref_quality: float, ref_cost: float) -> float:
    """Area dominated by the points and bounded by the reference point (worse in both)."""
    quality, cost = np.asarray(quality, float), np.asarray(cost, float)
    inside = (quality > ref_quality) & (cost < ref_cost)
    q, c = quality[inside], cost[inside]
    front = pareto_front_2d(q, c)
    if front.size == 0:
        return 0.0
    q, c = q[front], c[front]
    widths = np.diff(np.append(c, ref_cost))  # the best quality reachable at cost x is q[i] for c[i] <= x < c[i+1]
    return float(np.sum(widths * (q - ref_quality)))


def hypervolume_history(quality, cost, ref_quality: float, ref_cost: float, points: int = 100) -> list[tuple[int, float]]:
    """(trials so far, hypervolume of their front) at ``points`` evenly spaced trial counts."""
    n = len(quality)
    if n == 0:
        return []
    counts = np.unique(np.linspace(1, n, min(points, n)).round().astype(int))
    quality, cost = np.asarray(quality, float), np.asarray(cost, float)
    return [(int(k), hypervolume_2d(quality[:k], cost[:k], ref_quality, ref_cost)) for k in counts]


def pareto_layers_2d(quality, cost, max_points: int | None = None) -> list[np.ndarray]:
    """Non-dominated layers: the front, then the front of the rest, and so on (indices, each
    by increasing cost); stops once the layers hold ``max_points`` points (default: all)."""
    quality, cost = np.asarray(quality, float), np.asarray(cost, float)
    left = np.arange(quality.size)
    layers, total = [], 0
    limit = quality.size if max_points is None else max_points
    while left.size and total < limit:
        front = left[pareto_front_2d(quality[left], cost[left])]
        if not front.size:  # the rest is worse than any point (-inf quality): no more layers
            break
        layers.append(front)
        total += front.size
        left = np.setdiff1d(left, front, assume_unique=True)
    return layers


def spread_candidates(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over a front of ``n`` points (all when ``n <= k``), ends included."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))
