"""Gaussian-process regression (sklearn): a smooth prior over architectures with a
calibrated posterior std, strong when samples are few (hundreds)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from .base import Predictor, register_predictor


@register_predictor("gp")
class GPPredictor(Predictor):
    """GP with a Matern-5/2 kernel (one length scale: ARD over ~100 features overfits
    hundreds of samples) plus white noise for the measurement noise of accuracies."""

    @classmethod
    def default_hparams(cls) -> dict:
        return {"length_scale": 10.0, "noise": 0.1, "restarts": 0}

    def _fit(self, F_: np.ndarray, z: np.ndarray) -> None:
        h = self.hparams
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(h["length_scale"], (1e-1, 1e3), nu=2.5)
                  + WhiteKernel(h["noise"], (1e-5, 1e1)))
        self.model = GaussianProcessRegressor(kernel, n_restarts_optimizer=h["restarts"], random_state=self.seed)
        with warnings.catch_warnings():
            # A hyper-parameter at its bound (e.g. almost no noise) is a fine optimum here.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(F_, z)

    def _predict(self, F_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.model.predict(F_, return_std=True)
        return mean, std

    def _get_state(self):
        return self.model

    def _set_state(self, state) -> None:
        self.model = state
