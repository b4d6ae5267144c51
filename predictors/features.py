"""Predictor inputs: the space's encoding, optionally extended with cost features.

Predictors receive ``X = space.encode_many(archs)`` (the one encoding of the project) and
turn it into model features here, by a named *recipe* that is stored with the predictor:

- ``encoding``: ``X`` unchanged.
- ``cost``: ``X`` plus log FLOPs and log params of every stage and of the whole network.
  Accuracy grows roughly with log compute, and the per-stage split tells a model *where*
  the compute sits, which the one-hot layer slots only imply through many interactions.

Cost features need the arch back, so :func:`decode_encoding` inverts ``space.encode``
(nearest choice per field); ``tests/test_predictors.py`` checks it against ``encode``.
"""

from __future__ import annotations

import numpy as np

from search_space import Arch, LayerChoice, SearchSpace, StageChoice

FEATURE_RECIPES = ("encoding", "cost")


def _nearest(values: np.ndarray, choices: tuple) -> np.ndarray:
    """Index of the choice whose encoded position (as ``space.encode`` scales it) is nearest."""
    lo, hi = min(choices), max(choices)
    pos = np.zeros(len(choices)) if hi == lo else (np.asarray(choices, float) - lo) / (hi - lo)
    return np.abs(values[:, None] - pos[None, :]).argmin(axis=1)


def decode_encoding(space: SearchSpace, X: np.ndarray) -> list[Arch]:
    """The archs whose ``space.encode`` rows are ``X`` (the inverse of ``encode_many``)."""
    X = np.asarray(X, dtype=np.float64)
    cfg = space.config
    n = X.shape[0]
    res = np.asarray(cfg.resolutions)[_nearest(X[:, 0], cfg.resolutions)]
    col = 1
    stages_per_row: list[list[StageChoice]] = [[] for _ in range(n)]
    for st in cfg.stages:
        depth = np.asarray(st.depths)[_nearest(X[:, col], st.depths)]
        width = np.asarray(st.widths, dtype=object)[_nearest(X[:, col + 1], st.widths)]
        col += 2
        slot = 1 + len(st.blocks) + 2
        layers_per_row: list[list[LayerChoice]] = [[] for _ in range(n)]
        for j in range(max(st.depths)):
            block_idx = X[:, col + 1: col + 1 + len(st.blocks)].argmax(axis=1)
            kernel = np.asarray(st.kernels)[_nearest(X[:, col + 1 + len(st.blocks)], st.kernels)]
            exp_col = X[:, col + 2 + len(st.blocks)]
            for b_i, b in enumerate(st.blocks):
                rows = np.flatnonzero((block_idx == b_i) & (j < depth))
                exps = st.expansions[b]
                picked = _nearest(exp_col[rows], exps)
                for r, e in zip(rows, picked):
                    layers_per_row[r].append(LayerChoice(b, int(kernel[r]), exps[e]))
            col += slot
        for r in range(n):
            stages_per_row[r].append(StageChoice(width[r], tuple(layers_per_row[r])))
    if col != X.shape[1]:
        raise ValueError(f"encoding has {X.shape[1]} columns, space {space.name!r} expects {col}")
    return [Arch(int(res[r]), tuple(stages_per_row[r])) for r in range(n)]


def cost_features(space: SearchSpace, archs: list[Arch]) -> np.ndarray:
    """Per arch: log FLOPs and log params of each stage, then of the whole net (float32)."""
    n_stages = len(space.config.stages)
    out = np.empty((len(archs), 2 * n_stages + 2), dtype=np.float64)
    for r, arch in enumerate(archs):
        specs = space.block_specs(arch)
        k = 1  # specs[0] is the stem
        for i, stage in enumerate(arch.stages):
            part = specs[k:k + stage.depth]
            out[r, 2 * i] = sum(s.flops() for s in part)
            out[r, 2 * i + 1] = sum(s.params() for s in part)
            k += stage.depth
        out[r, -2] = sum(s.flops() for s in specs)
        out[r, -1] = sum(s.params() for s in specs)
    return np.log(np.maximum(out, 1.0)).astype(np.float32)


def make_features(space: SearchSpace, X: np.ndarray, recipe: str) -> np.ndarray:
    """Model features from encodings ``X`` by ``recipe`` (one of :data:`FEATURE_RECIPES`)."""
    if recipe == "encoding":
        return np.asarray(X, dtype=np.float32)
    if recipe == "cost":
        return np.hstack([np.asarray(X, dtype=np.float32), cost_features(space, decode_encoding(space, X))])
    raise ValueError(f"unknown feature recipe {recipe!r}: expected one of {list(FEATURE_RECIPES)}")
