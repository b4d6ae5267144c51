"""Calibration: from the sum of block latencies to whole-network latency.

Summing blocks timed alone misses what happens between blocks: fusion across boundaries,
cache state (a block timed alone runs with its weights hot in cache), per-call overhead.
A calibration model corrects the sum. It keeps the form

    latency(net) = intercept + sum over blocks b of (scale[type(b)] * ms(b) + offset[type(b)])

so that every block still contributes one number and predicting many archs stays a sum
of look-ups. Two families are fitted on whole networks measured end to end:

- ``global``:         one scale for every block type, no offsets (a + b * sum);
- ``per_type_scale``: a scale for each block type;
- ``per_type``:       a scale and a per-block offset for each block type.

Both are fitted by ridge-regularised least squares on relative error, shrunk towards the
raw sum (scale 1, offset 0); the family and the ridge strength are chosen by leave-one-out
cross-validation on the calibration networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import accuracy_metrics

STEM_HEAD = ("stem", "head")
FAMILIES = ("global", "per_type_scale", "per_type")
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Calibration:
    """``intercept_ms`` + per-type ``scale`` and ``offset_ms`` (types absent: scale 1, offset 0)."""

    model: str = "identity"
    intercept_ms: float = 0.0
    scale: dict[str, float] = field(default_factory=dict)
    offset_ms: dict[str, float] = field(default_factory=dict)
    ridge: float = 0.0
    cv: dict = field(default_factory=dict)  # leave-one-out metrics of the chosen model
    candidates: dict = field(default_factory=dict)  # LOO MAPE of every (family, ridge) tried

    def block_ms(self, block_type: str, ms: float) -> float:
        """Calibrated contribution of one block."""
        return self.scale.get(block_type, 1.0) * ms + self.offset_ms.get(block_type, 0.0)

    def to_json(self) -> dict:
        """Plain data for the table file."""
        r = lambda d: {k: round(v, 6) for k, v in d.items()}
        return {"model": self.model, "intercept_ms": round(self.intercept_ms, 6), "scale": r(self.scale),
                "offset_ms": r(self.offset_ms), "ridge": self.ridge, "cv": self.cv, "candidates": self.candidates}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_json`."""
        return cls(d["model"], float(d["intercept_ms"]), {k: float(v) for k, v in d["scale"].items()},
                   {k: float(v) for k, v in d["offset_ms"].items()}, float(d.get("ridge", 0.0)),
                   d.get("cv", {}), d.get("candidates", {}))


def _design(nets: list[list[tuple[str, float]]], family: str, types: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Raw sums and the design matrix of the deviation from them, with parameter names."""
    raw = np.array([sum(ms for _, ms in net) for net in nets])
    cols, names = [np.ones(len(nets))], [("intercept", None)]
    if family == "global":
        cols.append(raw)
        names.append(("scale", "*"))
    else:
        for t in types:
            cols.append(np.array([sum(ms for bt, ms in net if bt == t) for net in nets]))
            names.append(("scale", t))
        for t in (types if family == "per_type" else []):
            if t not in STEM_HEAD:  # one stem and one head per net: their counts are the intercept
                cols.append(np.array([sum(1.0 for bt, _ in net if bt == t) for net in nets]))
                names.append(("offset", t))
    return raw, np.stack(cols, 1), names


def _solve(X: np.ndarray, target: np.ndarray, weight: np.ndarray, ridge: float) -> np.ndarray:
    """Weighted ridge least squares; columns after the first are standardised for the penalty."""
    scale = X[:, 1:].std(0)
    scale[scale <= 1e-9 * np.abs(X[:, 1:]).max(0)] = 1.0  # constant columns (a stem in every net)
    Xs = np.hstack([X[:, :1], X[:, 1:] / scale])
    A = np.vstack([Xs * weight[:, None], np.sqrt(ridge) * np.eye(X.shape[1])[1:]])
    b = np.concatenate([target * weight, np.zeros(X.shape[1] - 1)])
    theta = np.linalg.lstsq(A, b, rcond=None)[0]
    return np.concatenate([theta[:1], theta[1:] / scale])


def _loo_predictions(X, raw, y, ridge) -> np.ndarray:
    pred = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        theta = _solve(X[keep], y[keep] - raw[keep], 1 / y[keep], ridge)
        pred[i] = raw[i] + X[i] @ theta
    return pred


def fit_calibration(nets: list[list[tuple[str, float]]], measured_ms) -> Calibration:
    """Fit on calibration networks: ``nets[i]`` = (block type, table ms) of each block of net i.

    Picks the family and ridge strength with the lowest leave-one-out MAPE.
    """
    y = np.asarray(measured_ms, dtype=np.float64)
    if len(y) < 4:
        raise ValueError(f"calibration needs at least 4 measured networks, got {len(y)}")
    types = sorted({str(t) for net in nets for t, _ in net})
    best, candidates = None, {}
    for family in FAMILIES:
        raw, X, names = _design(nets, family, types)
        if X.shape[1] > len(y) - 2:
            continue  # more parameters than networks: leave-one-out would be meaningless
        for ridge in LAMBDAS:
            pred = _loo_predictions(X, raw, y, ridge)
            m = accuracy_metrics(pred, y)
            candidates[f"{family}/{ridge:g}"] = round(m["mape"], 5)
            if best is None or m["mape"] < best[0]["mape"]:
                best = (m, family, ridge, X, raw, names)
    m, family, ridge, X, raw, names = best
    theta = _solve(X, y - raw, 1 / y, ridge)
    cal = Calibration(family, float(theta[0]), ridge=ridge, cv=m, candidates=candidates)
    for (kind, t), v in zip(names[1:], theta[1:]):
        if kind == "scale":
            for tt in (types if t == "*" else [t]):
                cal.scale[tt] = 1.0 + float(v)
        else:
            cal.offset_ms[t] = float(v)
    return cal


def fit_flops_proxy(flops, measured_ms) -> tuple[float, float]:
    """The FLOPs baseline: (a, b) of latency = a + b * GFLOPs, least squares on relative error."""
    g = np.asarray(flops, dtype=np.float64) / 1e9
    y = np.asarray(measured_ms, dtype=np.float64)
    X = np.stack([np.ones_like(g), g], 1) / y[:, None]
    a, b = np.linalg.lstsq(X, np.ones_like(y), rcond=None)[0]
    return float(a), float(b)
