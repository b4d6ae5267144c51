"""Gradient-boosted trees (sklearn), an ensemble over bootstrap resamples.

One boosted model gives no uncertainty; fitting several on bootstrap resamples of the data,
each with its own seed, does: their spread (std) is the predictor's uncertainty.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from .base import Predictor, register_predictor


@register_predictor("gbt")
class GBTEnsemble(Predictor):
    """Bootstrap ensemble of histogram gradient-boosted trees; std = member spread."""

    @classmethod
    def default_hparams(cls) -> dict:
        return {"members": 5, "max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15,
                "min_samples_leaf": 10, "l2_regularization": 1.0}

    def _fit(self, F_: np.ndarray, z: np.ndarray) -> None:
        h = dict(self.hparams)
        members = h.pop("members")
        rng = np.random.default_rng(self.seed)
        self.models = []
        for m in range(members):
            idx = rng.integers(0, len(z), len(z))  # bootstrap resample
            # early_stopping off: with few samples a held-out slice costs more than it saves
            model = HistGradientBoostingRegressor(**h, early_stopping=False, random_state=self.seed * 1000 + m)
            self.models.append(model.fit(F_[idx], z[idx]))

    def _predict(self, F_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.stack([m.predict(F_) for m in self.models])
        return out.mean(0), out.std(0)

    def _get_state(self) -> list:
        return self.models

    def _set_state(self, state: list) -> None:
        self.models = state
