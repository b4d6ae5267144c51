"""Model selection by k-fold Kendall tau: the search needs the best *ranking*."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from sklearn.model_selection import KFold

from .base import Predictor, PredictorError
from .metrics import rank_metrics


def cross_val_kendall(make: Callable[[], Predictor], X: np.ndarray, y: np.ndarray, k: int = 5,
                      seed: int = 0) -> list[float]:
    """Kendall tau of a fresh ``make()`` predictor on each of ``k`` held-out folds."""
    y = np.asarray(y, dtype=np.float64)
    if not 2 <= k <= len(y) // 2:
        raise PredictorError(f"k={k} folds for {len(y)} samples: expected 2 <= k <= {len(y) // 2}")
    taus = []
    for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
        mean, _ = make().fit(X[train], y[train]).predict(X[test])
        taus.append(rank_metrics(y[test], mean)["kendall_tau"])
    return taus


def select_predictor(X: np.ndarray, y: np.ndarray, candidates: Mapping[str, Callable[[], Predictor]],
                     k: int = 5, seed: int = 0) -> tuple[str, dict[str, float]]:
    """Name of the candidate with the best mean k-fold Kendall tau, and every candidate's
    mean tau. ``candidates`` maps a name to a factory of unfitted predictors; every
    candidate sees the same folds."""
    if not candidates:
        raise PredictorError("select_predictor needs at least one candidate")
    scores = {name: float(np.mean(cross_val_kendall(make, X, y, k, seed))) for name, make in candidates.items()}
    return max(scores, key=scores.get), scores
