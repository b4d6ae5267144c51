"""Accuracy predictors: measured accuracy datasets, predictors with mean and uncertainty,
selection by rank correlation.

Predictors read ``X = space.encode_many(archs)`` and return ``(mean, std)`` of accuracy in [0, 1]::

    data = AccuracyDataset.load("acc.jsonl")
    X, y = data.arrays(space)
    pred = make_predictor("mlp", space).fit(X, y)
    mean, std = pred.predict(space.encode_many(candidates))
    pred.save("pred.pt"); pred = load_predictor("pred.pt", space)
"""

from .accuracy_dataset import AccuracyDataset, AccuracyDatasetError, build_accuracy_dataset
from .base import (PREDICTORS, Predictor, PredictorError, default_features, load_predictor, make_predictor,
                   register_predictor)
from .blend import BlendPredictor
from .features import (DEFAULT_FEATURES, FEATURE_RECIPES, composition_features, cost_features, decode_choices,
                        decode_encoding, layer_features, make_features)
from .gp import GPPredictor
from .metrics import rank_metrics
from .mlp import MLPEnsemble
from .plots import plot_predicted_vs_measured
from .sampling import sample_archs_spread, sample_mixture_arch
from .selection import cross_val_kendall, select_predictor
from .targets import DEFAULT_TARGET, TARGET_TRANSFORMS, fit_target, inverse_target
from .trees import GBTEnsemble

__all__ = [
    "AccuracyDataset", "AccuracyDatasetError", "BlendPredictor", "DEFAULT_FEATURES", "DEFAULT_TARGET",
    "FEATURE_RECIPES", "GBTEnsemble", "GPPredictor", "MLPEnsemble", "PREDICTORS", "Predictor",
    "PredictorError", "TARGET_TRANSFORMS", "build_accuracy_dataset", "composition_features", "cost_features",
    "cross_val_kendall", "decode_choices", "default_features", "decode_encoding", "fit_target", "inverse_target",
    "layer_features", "load_predictor", "make_features", "make_predictor", "plot_predicted_vs_measured",
    "rank_metrics", "register_predictor", "sample_archs_spread", "sample_mixture_arch", "select_predictor",
]
