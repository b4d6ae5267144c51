"""How well predicted latencies match measured ones."""

from __future__ import annotations

import numpy as np


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties accounted), O(n^2) in numpy: no scipy needed on the GPU image."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt(float(np.sum(dx != 0)) * float(np.sum(dy != 0)))
    return float(np.sum(dx * dy) / denom) if denom else float("nan")


def accuracy_metrics(predicted, measured, tolerance: float = 0.10) -> dict:
    """MAPE, share within +-``tolerance`` and Kendall tau of ``predicted`` against ``measured``."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    rel = np.abs(p / m - 1)
    tau = kendall_tau(p, m)
    return {"n": int(len(m)), "mape": float(rel.mean()), "within_10": float(np.mean(rel <= tolerance)),
            "kendall_tau": float(tau), "median_ratio": float(np.median(p / m))}


def repeatability(first, second, tolerance: float = 0.10) -> dict:
    """Share of items whose second measurement lands within +-``tolerance`` of the first."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    rel = np.abs(b / a - 1)
    return {"n": int(len(a)), "within_10": float(np.mean(rel <= tolerance)), "median_rel_diff": float(np.median(rel)),
            "mean_ratio": float(np.mean(b / a))}
