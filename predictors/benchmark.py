"""Predictor benchmarks on a measured accuracy dataset: every kind and feature recipe fitted on
one part and scored on the rest, k-fold selection on the fitted part, a FLOPs baseline, and a
JSON / Markdown / PNG report. The experiment scripts for each dataset share this code."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from search_space import SearchSpace
from search_space.io import atomic_write_json, atomic_write_text

from .base import make_predictor
from .features import DEFAULT_FEATURES, decode_encoding
from .metrics import rank_metrics
from .plots import plot_predicted_vs_measured
from .selection import select_predictor


def limit_threads(n: int) -> None:
    """Cap torch's and scikit-learn's (OpenMP, BLAS) CPU threads at ``n``; 0 leaves them all.
    Fits are timed and compared, so they must not compete for a shared machine's cores."""
    if n:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(n)
        threadpool_limits(n)


def holdout_split(n: int, n_fit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint (fit, test) index arrays: ``n_fit`` to fit, the other ``n - n_fit`` to score."""
    if not 2 <= n_fit <= n - 2:
        raise ValueError(f"n_fit={n_fit} of {n} samples: expected 2 <= n_fit <= {n - 2}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])


def compare_predictors(space: SearchSpace, X: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, test_idx: np.ndarray,
                       kinds=("mlp", "gbt", "gp", "blend"), features=(DEFAULT_FEATURES, "encoding"), folds: int = 5,
                       seed: int = 0, hparams: dict | None = None, log=print) -> tuple[dict, dict]:
    """Fit every (kind, features) on ``fit_idx``, score on ``test_idx``; select a kind by
    ``folds``-fold Kendall tau on ``fit_idx`` alone (default features, or the first recipe given).
    ``hparams`` maps a kind to keyword arguments. Returns the results (rows, selection,
    baselines, the selected kind's test predictions for the scatter plot; plain data) and the
    fitted predictors by (kind, features)."""
    hparams = hparams or {}
    Xf, yf, Xt, yt = X[fit_idx], y[fit_idx], X[test_idx], y[test_idx]
    rows, preds, fitted = [], {}, {}
    selection_features = DEFAULT_FEATURES if DEFAULT_FEATURES in features else features[0]
    for feat in features:
        for kind in kinds:
            start = time.perf_counter()
            pred = make_predictor(kind, space, features=feat, seed=seed, **hparams.get(kind, {})).fit(Xf, yf)
            fit_s = time.perf_counter() - start
            mean, std = pred.predict(Xt)
            # Share of held-out subnets whose measured accuracy lies within 2 std of the prediction.
            coverage = float(np.mean(np.abs(yt - mean) <= 2 * std))
            rows.append({"kind": kind, "features": feat, **rank_metrics(yt, mean), "fit_s": round(fit_s, 2),
                         "mean_std": float(std.mean()), "coverage_2std": coverage})
            preds[(kind, feat)] = (mean, std)
            fitted[(kind, feat)] = pred
            log(f"  {kind:4s} {feat:9s} tau {rows[-1]['kendall_tau']:.4f}  spearman {rows[-1]['spearman']:.4f}  "
                f"rmse {100 * rows[-1]['rmse']:.3f} pts  fit {fit_s:.1f} s")
    start = time.perf_counter()
    candidates = {k: (lambda k=k: make_predictor(k, space, features=selection_features, seed=seed,
                                                 **hparams.get(k, {})))
                  for k in kinds}
    best, scores = select_predictor(Xf, yf, candidates, k=folds, seed=seed)
    selection = {"folds": folds, "features": selection_features, "kendall_tau": scores, "selected": best,
                 "seconds": round(time.perf_counter() - start, 1)}
    log(f"  {folds}-fold selection on the fit part ({selection_features} features): " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        + f" -> {best}")
    archs = decode_encoding(space, Xt)
    baselines = {
        "flops": rank_metrics(yt, np.log([space.flops(a) for a in archs]))["kendall_tau"],
        "params": rank_metrics(yt, np.log([space.params(a) for a in archs]))["kendall_tau"],
    }
    mean, std = preds[(best, selection_features)]
    return {"rows": rows, "selection": selection, "baselines_kendall_tau": baselines,
            "n_fit": int(len(fit_idx)), "n_test": int(len(test_idx)),
            "selected_test": {"kind": best, **rank_metrics(yt, mean)},
            "test_predictions": {"measured": yt.tolist(), "mean": mean.tolist(), "std": std.tolist()}}, fitted


def markdown_report(title: str, result: dict, context: dict) -> str:
    """A short Markdown page: context lines, the per-predictor table, selection and baselines."""
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in context.items() if not isinstance(v, (dict, list))]
    lines += ["", f"Fitted on {result['n_fit']} subnets, scored on {result['n_test']} others.", "",
              "| predictor | features | Kendall tau | Spearman | RMSE (points) | mean std (points) "
              "| within 2 std | fit s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['features']} | {r['kendall_tau']:.4f} | {r['spearman']:.4f} | "
                     f"{100 * r['rmse']:.3f} | {100 * r['mean_std']:.3f} | {100 * r['coverage_2std']:.0f}% "
                     f"| {r['fit_s']} |")
    sel = result["selection"]
    lines += ["", f"{sel['folds']}-fold Kendall tau on the fit part ({sel['features']} features): "
              + ", ".join(f"{k} {v:.4f}" for k, v in sel["kendall_tau"].items())
              + f"; selected **{sel['selected']}**, held-out Kendall tau "
              f"**{result['selected_test']['kendall_tau']:.4f}**.",
              "", "Baselines on the same held-out subnets (rank by one number): "
              + ", ".join(f"{k} tau {v:.4f}" for k, v in result["baselines_kendall_tau"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, stem: str, title: str, result: dict, context: dict) -> list[Path]:
    """Write ``stem``.json (everything), ``stem``.md and ``stem``.png (selected predictor's scatter)."""
    out_dir = Path(out_dir)
    sel = result["selected_test"]
    p = result["test_predictions"]
    png = plot_predicted_vs_measured(
        np.asarray(p["measured"]), np.asarray(p["mean"]), np.asarray(p["std"]), out_dir / f"{stem}.png",
        f"{title}\n{sel['kind']}: Kendall tau {sel['kendall_tau']:.3f}, RMSE {100 * sel['rmse']:.2f} pts, "
        f"n={sel['n']} held out")
    js = atomic_write_json(out_dir / f"{stem}.json", {"title": title, "context": context, **result})
    md = atomic_write_text(out_dir / f"{stem}.md", markdown_report(title, result, context))
    return [js, md, png]

