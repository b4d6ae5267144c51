"""Calibration: from the sum of block latencies to whole-network latency.

Summing blocks timed alone misses what happens between blocks: fusion across boundaries,
cache state (a block timed alone runs with its weights hot in cache; inside a network the
other blocks' weights have evicted them), per-call overhead. A calibration model corrects
the sum. It keeps the form

    latency(net) = intercept + sum over blocks b of
                   (scale[type(b)] * ms(b) + offset[type(b)] + ms_per_mparam * params(b) / 1e6)

so that every block still contributes one number and predicting many archs stays a sum
of look-ups. Families fitted on whole networks measured end to end:

- ``global``:         one scale for every block type (a + b * sum);
- ``per_type_scale``: a scale for each block type;
- ``per_type``:       a scale and a per-block offset for each block type;

each also with ``+weights``: a cost per million parameters (loading weights that are cold
in cache). On the cifar preset with ONNX Runtime on the 2-core VM, the weights term took
leave-one-out accuracy on 100 calibration nets from 90% to 93% within +-10%.

All are fitted by ridge-regularised least squares on relative error, shrunk towards the
raw sum (scale 1, no other terms); the family and the ridge strength are chosen by
leave-one-out cross-validation on the calibration networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from search_space import BlockSpec

from .metrics import accuracy_metrics

STEM_HEAD = ("stem", "head")
FAMILIES = ("global", "per_type_scale", "per_type")
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

# One calibration network: (spec, table ms) of each of its blocks.
Net = Sequence[tuple[BlockSpec, float]]


@dataclass
class Calibration:
    """``intercept_ms`` + per-type ``scale`` and ``offset_ms`` + ``ms_per_mparam`` (see module doc)."""

    model: str = "identity"
    intercept_ms: float = 0.0
    scale: dict[str, float] = field(default_factory=dict)  # types absent: 1
    offset_ms: dict[str, float] = field(default_factory=dict)  # types absent: 0
    ms_per_mparam: float = 0.0
    ridge: float = 0.0
    cv: dict = field(default_factory=dict)  # leave-one-out metrics of the chosen model
    candidates: dict = field(default_factory=dict)  # LOO MAPE of every (family, ridge) tried

    def block_ms(self, spec: BlockSpec, ms: float) -> float:
        """Calibrated contribution of one block whose table latency is ``ms``."""
        return (self.scale.get(spec.block, 1.0) * ms + self.offset_ms.get(spec.block, 0.0)
                + self.ms_per_mparam * spec.params() / 1e6)

    def to_json(self) -> dict:
        """Plain data for the table file."""
        r = lambda d: {k: round(v, 6) for k, v in d.items()}
        return {"model": self.model, "intercept_ms": round(self.intercept_ms, 6), "scale": r(self.scale),
                "offset_ms": r(self.offset_ms), "ms_per_mparam": round(self.ms_per_mparam, 6), "ridge": self.ridge,
                "cv": self.cv, "candidates": self.candidates}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_json`."""
        return cls(d["model"], float(d["intercept_ms"]), {k: float(v) for k, v in d["scale"].items()},
                   {k: float(v) for k, v in d["offset_ms"].items()}, float(d.get("ms_per_mparam", 0.0)),
                   float(d.get("ridge", 0.0)), d.get("cv", {}), d.get("candidates", {}))


def _design(nets: list[Net], family: str, weights: bool, types: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Raw sums and the design matrix of the deviation from them, with parameter names."""
    raw = np.array([sum(ms for _, ms in net) for net in nets])
    cols, names = [np.ones(len(nets))], [("intercept", None)]
    if family == "global":
        cols.append(raw)
        names.append(("scale", "*"))
    else:
        for t in types:
            cols.append(np.array([sum(ms for s, ms in net if s.block == t) for net in nets]))
            names.append(("scale", t))
    if family == "per_type":
        for t in types:
            if t not in STEM_HEAD:  # one stem and one head per net: their counts are the intercept
                cols.append(np.array([sum(1.0 for s, _ in net if s.block == t) for net in nets]))
                names.append(("offset", t))
    if weights:
        cols.append(np.array([sum(s.params() for s, _ in net) / 1e6 for net in nets]))
        names.append(("weights", None))
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


def fit_calibration(nets: list[Net], measured_ms) -> Calibration:
    """Fit on calibration networks: ``nets[i]`` = (spec, table ms) of each block of net i.

    Picks the family and ridge strength with the lowest leave-one-out MAPE.
    """
    y = np.asarray(measured_ms, dtype=np.float64)
    if len(y) < 4:
        raise ValueError(f"calibration needs at least 4 measured networks, got {len(y)}")
    types = sorted({s.block for net in nets for s, _ in net})
    best, candidates = None, {}
    for family in FAMILIES:
        for weights in (False, True):
            raw, X, names = _design(nets, family, weights, types)
            if X.shape[1] > len(y) - 2:
                continue  # about as many parameters as networks: leave-one-out would be meaningless
            model = family + ("+weights" if weights else "")
            for ridge in LAMBDAS:
                m = accuracy_metrics(_loo_predictions(X, raw, y, ridge), y)
                candidates[f"{model}/{ridge:g}"] = round(m["mape"], 5)
                if best is None or m["mape"] < best[0]["mape"]:
                    best = (m, model, ridge, X, raw, names)
    m, model, ridge, X, raw, names = best
    theta = _solve(X, y - raw, 1 / y, ridge)
    cal = Calibration(model, float(theta[0]), ridge=ridge, cv=m, candidates=candidates)
    for (kind, t), v in zip(names[1:], theta[1:]):
        if kind == "scale":
            for tt in (types if t == "*" else [t]):
                cal.scale[tt] = 1.0 + float(v)
        elif kind == "offset":
            cal.offset_ms[t] = float(v)
        else:
            cal.ms_per_mparam = float(v)
    return cal


def fit_flops_proxy(flops, measured_ms) -> tuple[float, float]:
    """The FLOPs baseline: (a, b) of latency = a + b * GFLOPs, least squares on relative error."""
    g = np.asarray(flops, dtype=np.float64) / 1e9
    y = np.asarray(measured_ms, dtype=np.float64)
    X = np.stack([np.ones_like(g), g], 1) / y[:, None]
    a, b = np.linalg.lstsq(X, np.ones_like(y), rcond=None)[0]
    return float(a), float(b)
