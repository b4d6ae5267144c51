"""Target transforms: what the predictor kinds fit instead of raw accuracy.

- ``standard``: (y - mean) / std.
- ``rank_gauss``: the normal quantile of each accuracy's rank, ``Phi^-1(rank / (n + 1))``.
  Accuracies of supernet subnets have a long low tail, such as a few broken mixes far below the rest. Under a
  squared loss those few points pull the fit, while Kendall tau weighs every pair alike. After the
  transform every rank step weighs the same. Predictions map back through the fitted quantile
  function, which is monotone. Beyond the fitted range it extends linearly, so candidates better
  than any fitted subnet still rank apart.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

TARGET_TRANSFORMS = ("standard", "rank_gauss")
# Best by 5-fold CV on the fit sets of all six JPEG-CIFAR-10 datasets (blend, composition features):
# mean 0.841 vs 0.831, higher on five (experiments/results/predictor/predictor_target_cifar.md).
DEFAULT_TARGET = "rank_gauss"
_TAIL = 0.05  # share of points at each end whose slope extends the quantile function


def fit_target(y: np.ndarray, transform: str) -> tuple[np.ndarray, dict]:
    """(the transformed targets, the state that :func:`inverse_target` needs)."""
    if transform not in TARGET_TRANSFORMS:
        raise ValueError(f"unknown target transform {transform!r}: expected one of {list(TARGET_TRANSFORMS)}")
    if transform == "standard":
        mean, std = float(y.mean()), float(y.std()) or 1.0
        return (y - mean) / std, {"y_mean": mean, "y_std": std}
    z = norm.ppf(rankdata(y) / (len(y) + 1))
    grid_z, inverse = np.unique(z, return_inverse=True)  # tied accuracies share one z
    grid_y = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return z, {"grid_z": grid_z, "grid_y": grid_y}


def inverse_target(mean: np.ndarray, std: np.ndarray, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (mean, std) in transformed units -> accuracy units."""
    if "grid_z" not in state:
        return mean * state["y_std"] + state["y_mean"], std * state["y_std"]
    h = 1e-3  # the std maps through the local slope of the quantile function
    slope = (_quantile(mean + h, state) - _quantile(mean - h, state)) / (2 * h)
    return _quantile(mean, state), std * slope


def _quantile(z: np.ndarray, state: dict) -> np.ndarray:
    """Accuracy at transformed value ``z``: piecewise linear inside the fitted grid, and the
    slope of the outer ``_TAIL`` of points beyond it."""
    gz, gy = state["grid_z"], state["grid_y"]
    if len(gz) < 2:
        return np.full_like(np.asarray(z, dtype=np.float64), gy[0])
    k = max(1, int(_TAIL * len(gz)))
    lo_slope = (gy[k] - gy[0]) / (gz[k] - gz[0])
    hi_slope = (gy[-1] - gy[-1 - k]) / (gz[-1] - gz[-1 - k])
    z = np.asarray(z, dtype=np.float64)
    out = np.interp(z, gz, gy)
    out = np.where(z < gz[0], gy[0] + (z - gz[0]) * lo_slope, out)
    return np.where(z > gz[-1], gy[-1] + (z - gz[-1]) * hi_slope, out)
