"""How well predicted latencies match measured ones."""

from __future__ import annotations

import numpy as np


def accuracy_metrics(predicted, measured, tolerance: float = 0.10) -> dict:
    """MAPE, share within +-``tolerance`` and Kendall tau of ``predicted`` against ``measured``."""
    from scipy.stats import kendalltau

    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    rel = np.abs(p / m - 1)
    tau = kendalltau(p, m)[0] if len(m) > 1 else float("nan")
    return {"n": int(len(m)), "mape": float(rel.mean()), "within_10": float(np.mean(rel <= tolerance)),
            "kendall_tau": float(tau), "median_ratio": float(np.median(p / m))}


def repeatability(first, second, tolerance: float = 0.10) -> dict:
    """Share of items whose second measurement lands within +-``tolerance`` of the first."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    rel = np.abs(b / a - 1)
    return {"n": int(len(a)), "within_10": float(np.mean(rel <= tolerance)), "median_rel_diff": float(np.median(rel)),
            "mean_ratio": float(np.mean(b / a))}
