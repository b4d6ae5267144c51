"""Fitting an accuracy predictor on an accuracy dataset and scoring it on held-out subnets
(``hwnas predictor fit|eval``, the pipeline's predictor stage, experiments)."""

from __future__ import annotations

import sys
from pathlib import Path

from predictors import (DEFAULT_FEATURES, DEFAULT_TARGET, PREDICTORS, AccuracyDataset, Predictor, load_predictor,
                        make_predictor, plot_predicted_vs_measured, rank_metrics)
from predictors.selection import auto_plan, select_kind
from search_space import UserError


def fit_predictor(data: AccuracyDataset, model: str = "auto", *, features: str = DEFAULT_FEATURES,
                  folds: int | None = None, seed: int = 0, candidates: list[str] | None = None,
                  target: str = DEFAULT_TARGET) -> tuple[Predictor, dict[str, float] | None]:
    """Fit a predictor of kind ``model`` on ``data``; ``auto`` first selects among ``candidates``
    (default: every kind) by k-fold Kendall tau (``folds``, default 5, or 3 from 1,000 samples on,
    with cheaper stand-ins and early stops: :func:`predictors.selection.select_kind`), and also
    returns their scores."""
    space = data.space()
    X, y = data.arrays(space)
    scores, hparams, meta = None, {}, {}
    if model == "auto":
        kinds = candidates or sorted(PREDICTORS)
        unknown = [k for k in kinds if k not in PREDICTORS]
        if unknown:
            raise UserError(f"candidate kind {unknown[0]!r} is unknown; expected some of {sorted(PREDICTORS)}")
        folds, plan = auto_plan(len(y), kinds, folds)

        def make(kind: str, hp: dict) -> Predictor:
            return make_predictor(kind, space, features=features, seed=seed, target=target, **hp)

        model, scores, ran = select_kind(X, y, plan, make, k=folds, seed=seed)
        hparams, meta = plan[model], {"selection_folds": folds, "selection_folds_run": ran}
    predictor = make_predictor(model, space, features=features, seed=seed, target=target, **hparams).fit(X, y)
    predictor.meta.update({"fitted_on": {k: data.header[k] for k in ("checkpoint_hash", "dataset", "split")},
                           "n_train": len(y), "selection_kendall_tau": scores, **meta})
    return predictor, scores


def evaluate_predictor(predictor_path: str | Path, data_path: str | Path,
                       plot: str | Path | None = None) -> tuple[dict, Predictor]:
    """Kendall tau, Spearman rho, RMSE and n of a saved predictor on a held-out accuracy dataset,
    and the predictor; ``plot``: also a predicted-vs-measured scatter written there."""
    data = AccuracyDataset.load(data_path)
    space = data.space()
    predictor = load_predictor(predictor_path, space)
    X, y = data.arrays(space)
    if len(y) < 2:
        raise UserError(f"accuracy dataset {str(data_path)!r} has {len(y)} subnets; expected at least 2 to score a "
                        "ranking")
    mean, std = predictor.predict(X)
    metrics = rank_metrics(y, mean)
    fitted_on = predictor.meta.get("fitted_on", {})
    if fitted_on.get("checkpoint_hash") not in (None, data.header["checkpoint_hash"]):
        print(f"warning: predictor was fitted on checkpoint {fitted_on['checkpoint_hash']}, these accuracies come "
              f"from checkpoint {data.header['checkpoint_hash']}", file=sys.stderr)
    if plot:
        title = (f"{predictor.kind} on {data.header['dataset']}/{data.header['split']}: tau "
                 f"{metrics['kendall_tau']:.3f}, RMSE {100 * metrics['rmse']:.2f} pts")
        plot_predicted_vs_measured(y, mean, std, plot, title)
    return metrics, predictor
