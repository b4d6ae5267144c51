"""Accuracy predictors: measured accuracy datasets, predictors with mean and uncertainty,
selection by rank correlation.

Predictors read ``X = space.encode_many(archs)`` and return ``(mean, std)`` of accuracy in [0, 1]::

    data = AccuracyDataset.load("acc.jsonl")
    X, y = data.arrays(space)
    pred = make_predictor("mlp", space).fit(X, y)
    mean, std = pred.predict(space.encode_many(candidates))
    pred.save("pred.pt"); pred = load_predictor("pred.pt", space)

Names load lazily: features, metrics and sampling need no torch; the predictors themselves do.
"""

from search_space._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "accuracy_dataset": ["AccuracyDataset", "AccuracyDatasetError", "build_accuracy_dataset"],
    "base": ["Predictor", "PredictorError", "default_features", "load_predictor", "make_predictor", "predictor_kinds", "register_predictor"],
    "blend": ["BlendPredictor"],
    "features": ["DEFAULT_FEATURES", "FEATURE_RECIPES", "composition_features", "cost_features", "decode_choices",
                 "decode_encoding", "layer_features", "make_features"],
    "gp": ["GPPredictor"],
    "kinds": ["PREDICTORS"],  # through kinds: the registry with every built-in kind in it
    "metrics": ["rank_metrics"],
    "mlp": ["MLPEnsemble"],
    "plots": ["plot_predicted_vs_measured"],
    "sampling": ["sample_archs_spread", "sample_mixture_arch"],
    "selection": ["cross_val_kendall", "select_predictor"],
    "targets": ["DEFAULT_TARGET", "TARGET_TRANSFORMS", "fit_target", "inverse_target"],
    "trees": ["GBTEnsemble"],
})
