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


# ---- `--model auto`: the choice among predictor kinds, at a cost that grows slowly with the data ----
# From this many samples on, fewer folds and cheaper stand-ins: with 3 folds each fit still sees
# 1,000 of 1,500 subnets. In a one-off check on the first 1,500 subnets of the cifar_pool accuracy
# dataset (2-core VM, not a committed benchmark), gbt with 2 members of 300 trees at twice the
# learning rate ranked the next 500 subnets as the default 5 x 600 did (Kendall tau 0.893 vs 0.892;
# in the blend 0.9256 both) in about a quarter of the time; the whole selection, old against new,
# is experiments/results/predictor/predictor_auto_speed.md.
LARGE_SET, LARGE_SET_FOLDS, SMALL_SET_FOLDS = 1000, 3, 5
LARGE_SET_HPARAMS = {"gbt": {"members": 2, "n_estimators": 300, "learning_rate": 0.06}}
# A candidate whose mean fold tau so far trails the best by more than this is not fitted on later folds.
HOPELESS_MARGIN = 0.02


def auto_plan(n: int, kinds: list[str], folds: int | None = None) -> tuple[int, dict[str, dict]]:
    """Folds and each candidate kind's hyper-parameters for ``--model auto`` on ``n`` samples:
    ``folds`` if given, else 5 below :data:`LARGE_SET` samples and 3 from it on, where the kinds of
    :data:`LARGE_SET_HPARAMS` (also as members of a blend) take their cheaper settings."""
    from .base import predictor_kinds

    large = n >= LARGE_SET
    cheap = LARGE_SET_HPARAMS if large else {}
    plan = {}
    for kind in kinds:
        cls = predictor_kinds()[kind]
        members = getattr(cls, "members_of", None)
        if members is not None:
            plan[kind] = {"members": {m: {**hp, **cheap.get(m, {})} for m, hp in members(cls.default_hparams()).items()}}
        else:
            plan[kind] = dict(cheap.get(kind, {}))
    return folds or (LARGE_SET_FOLDS if large else SMALL_SET_FOLDS), plan


def select_kind(X: np.ndarray, y: np.ndarray, candidates: Mapping[str, dict], make: Callable[[str, dict], Predictor],
                k: int = 5, seed: int = 0, margin: float = HOPELESS_MARGIN) -> tuple[str, dict[str, float], dict[str, int]]:
    """Pick among predictor kinds (``candidates`` maps a kind to its hyper-parameters) by mean
    ``k``-fold Kendall tau, as :func:`select_predictor` does, for less work:

    - a kind that averages others (``members_of``: the blend) is scored from its members' fold
      predictions, fitted once for both (the blend fits exactly those members on the same data);
    - after each fold, a candidate trailing the best mean so far by more than ``margin`` stops.

    ``make(kind, hparams)`` returns an unfitted predictor. Returns the winner, every candidate's
    mean tau over the folds it ran, and how many folds each ran."""
    from .base import predictor_kinds

    y = np.asarray(y, dtype=np.float64)
    if not 2 <= k <= len(y) // 2:
        raise PredictorError(f"k={k} folds for {len(y)} samples: expected 2 <= k <= {len(y) // 2}")
    if not candidates:
        raise PredictorError("select_kind needs at least one candidate")
    parts = {}  # candidate -> the (kind, hparams) fits whose mean it predicts
    for name, hp in candidates.items():
        members = getattr(predictor_kinds()[name], "members_of", None)
        parts[name] = list(members(hp).items()) if members else [(name, hp)]
    taus: dict[str, list[float]] = {name: [] for name in candidates}
    alive = list(candidates)
    for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
        fitted: dict[str, np.ndarray] = {}
        for name in alive:
            preds = []
            for kind, hp in parts[name]:
                key = f"{kind}{sorted(hp.items())}"
                if key not in fitted:
                    fitted[key] = make(kind, hp).fit(X[train], y[train]).predict_transformed(X[test])
                preds.append(fitted[key])
            taus[name].append(rank_metrics(y[test], np.mean(preds, axis=0))["kendall_tau"])
        best = max(np.mean(taus[n]) for n in alive)
        alive = [n for n in alive if np.mean(taus[n]) >= best - margin]
    scores = {name: float(np.mean(t)) for name, t in taus.items()}
    return max(alive, key=scores.get), scores, {name: len(t) for name, t in taus.items()}
