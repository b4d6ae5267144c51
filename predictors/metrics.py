"""How well predicted accuracies match measured ones: ranking first, error second."""

from __future__ import annotations

import numpy as np
from scipy import stats


def rank_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Kendall tau, Spearman rho and RMSE (accuracy units) of ``y_pred`` against ``y_true``."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape or y_true.size < 2:
        raise ValueError(f"need two equal-length arrays of at least 2 values, got {y_true.shape} and {y_pred.shape}")
    rmse = float(np.sqrt(np.mean((y_true - y_pred) ** 2)))
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        # No ranking to compare: score 0 (not NaN) so that selection can still compare it.
        return {"kendall_tau": 0.0, "spearman": 0.0, "rmse": rmse, "n": int(y_true.size)}
    tau = stats.kendalltau(y_true, y_pred).statistic
    rho = stats.spearmanr(y_true, y_pred).statistic
    return {"kendall_tau": float(tau), "spearman": float(rho), "rmse": rmse, "n": int(y_true.size)}
