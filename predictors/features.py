"""Predictor inputs: the space's encoding, optionally extended with cost features.

Predictors receive ``X = space.encode_many(archs)`` (the one encoding of the project) and
turn it into model features here, by a named *recipe* that is stored with the predictor:

- ``encoding``: ``X`` unchanged.
- ``cost``: ``X`` plus log FLOPs and log params of every stage and of the whole network.
  Accuracy grows roughly with log compute, and the per-stage split tells a model *where*
  the compute sits, which the one-hot layer slots only imply through many interactions.
- ``layers``: ``cost`` plus log FLOPs and log params of every layer slot.
- ``composition`` (the default): ``layers`` plus, per stage and for the whole net, the fraction of layers of
  each block type and the fraction identical to the largest's and to the smallest's layer.
  Sandwich training updates the largest's and the smallest's layer options every step and the
  others only in random subnets, so on JPEG-CIFAR-10 the block mix explained much of what FLOPs
  do not (correlation with the FLOPs residual: +0.45 for the pconv share, -0.43 for fused_mbconv).
  One-hot slots hold this only as sums over slots, which trees in particular split poorly.

Cost features need the choices back: :func:`decode_choices` inverts ``space.encode`` (nearest
choice per field, vectorised) into choice indices; FLOPs and params then come from per-layer
tables (:class:`CostTables`) by numpy indexing, microseconds per arch, because a search
scores many thousands of candidates. ``tests/test_predictors.py`` checks both against
``space.encode`` and ``space.block_specs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from search_space import Arch, SearchSpace, StageChoice

FEATURE_RECIPES = ("encoding", "cost", "layers", "composition")
# Best by 5-fold CV on the fit sets of all six JPEG-CIFAR-10 datasets, for the blend (the kind CV
# selects on most of them): higher than "layers" on each, mean 0.831 vs 0.828
# (experiments/results/predictor/predictor_composition_cifar.md; "layers" beat "cost" the same way before,
# predictor_variants_cifar.md).
DEFAULT_FEATURES = "composition"


def _nearest(values: np.ndarray, choices: tuple) -> np.ndarray:
    """Index of the choice whose encoded position (as ``space.encode`` scales it) is nearest."""
    lo, hi = min(choices), max(choices)
    pos = np.zeros(len(choices)) if hi == lo else (np.asarray(choices, float) - lo) / (hi - lo)
    return np.abs(values[:, None] - pos[None, :]).argmin(axis=1)


@dataclass
class Choices:
    """Choice indices of n archs: resolution (n,); per stage depth (n,), width index (n,) and
    the index into ``space.layer_options(stage)`` of every layer slot (n, max depth), -1 if unused."""

    resolution: np.ndarray
    depth: list[np.ndarray]
    width: list[np.ndarray]
    option: list[np.ndarray]


def decode_choices(space: SearchSpace, X: np.ndarray) -> Choices:
    """Choice indices of the archs whose ``space.encode`` rows are ``X``."""
    X = np.asarray(X, dtype=np.float64)
    cfg = space.config
    expected = space.encoding_size
    if X.ndim != 2 or X.shape[1] != expected:
        raise ValueError(f"encodings have shape {X.shape}, space {space.name!r} expects (n, {expected})")
    out = Choices(_nearest(X[:, 0], cfg.resolutions), [], [], [])
    col = 1
    for st in cfg.stages:
        depth = np.asarray(st.depths)[_nearest(X[:, col], st.depths)]
        out.depth.append(depth)
        out.width.append(_nearest(X[:, col + 1], st.widths))
        col += 2
        nb, nk = len(st.blocks), len(st.kernels)
        # layer_options order: block, then kernel, then that block's expansions
        offsets = np.cumsum([0] + [nk * len(st.expansions[b]) for b in st.blocks])[:-1]
        slots = []
        for j in range(max(st.depths)):
            block = X[:, col + 1: col + 1 + nb].argmax(axis=1)
            kernel = _nearest(X[:, col + 1 + nb], st.kernels)
            exp_pos = X[:, col + 2 + nb]
            n_exp = np.asarray([len(st.expansions[b]) for b in st.blocks])[block]
            exp = np.zeros(len(X), dtype=np.int64)
            for b_i, b in enumerate(st.blocks):  # expansions are scaled per block type
                rows = block == b_i
                exp[rows] = _nearest(exp_pos[rows], st.expansions[b])
            slots.append(np.where(j < depth, offsets[block] + kernel * n_exp + exp, -1))
            col += 1 + nb + 2
        out.option.append(np.stack(slots, axis=1))
    return out


def decode_encoding(space: SearchSpace, X: np.ndarray) -> list[Arch]:
    """The archs whose ``space.encode`` rows are ``X`` (the inverse of ``encode_many``)."""
    c = decode_choices(space, X)
    cfg = space.config
    archs = []
    for r in range(len(c.resolution)):
        stages = tuple(StageChoice(st.widths[c.width[i][r]],
                                   tuple(space.layer_options(i)[o] for o in c.option[i][r] if o >= 0))
                       for i, st in enumerate(cfg.stages))
        archs.append(Arch(cfg.resolutions[c.resolution[r]], stages))
    return archs


class CostTables:
    """FLOPs and params of every layer an arch of ``space`` can contain, indexed by choices:
    ``first[i][res, width of stage i-1, width, option]`` for a stage's first layer (its input
    comes from the previous stage), ``rest[i][res, width, option]`` for the others, and the
    stem and head. Each entry holds (flops, params)."""

    def __init__(self, space: SearchSpace):
        cfg = space.config
        self.first, self.rest = [], []
        n_res = len(cfg.resolutions)
        prev_channels = [cfg.stem_channels]
        self.stem = np.zeros((n_res, 2))
        for r, res in enumerate(cfg.resolutions):
            spec = space.stem_spec(res)
            self.stem[r] = spec.flops(), spec.params()
        for i, st in enumerate(cfg.stages):
            channels = [space.stage_channels(i, w) for w in st.widths]
            opts = space.layer_options(i)
            first = np.zeros((n_res, len(prev_channels), len(channels), len(opts), 2))
            rest = np.zeros((n_res, len(channels), len(opts), 2))
            for r, res in enumerate(cfg.resolutions):
                size_in, size_out = space.stage_sizes(res)[i]
                for o, opt in enumerate(opts):
                    for w, c_out in enumerate(channels):
                        for p, c_in in enumerate(prev_channels):
                            spec = space._layer_spec(i, 0, opt, c_in, c_out, size_in)
                            first[r, p, w, o] = spec.flops(), spec.params()
                        spec = space._layer_spec(i, 1, opt, c_out, c_out, size_out)
                        rest[r, w, o] = spec.flops(), spec.params()
            self.first.append(first)
            self.rest.append(rest)
            prev_channels = channels
        self.head = np.zeros((n_res, len(prev_channels), 2))
        for r, res in enumerate(cfg.resolutions):
            for w, c in enumerate(prev_channels):
                spec = space.head_spec(c, space.stage_sizes(res)[-1][1])
                self.head[r, w] = spec.flops(), spec.params()

    def layer_costs(self, c: Choices) -> tuple[list[np.ndarray], np.ndarray]:
        """(per stage, (flops, params) of every layer slot (n, max depth, 2), zero where unused;
        the last stage's width index (n,), which the head's cost depends on)."""
        n = len(c.resolution)
        stages = []
        prev_w = np.zeros(n, dtype=np.int64)  # the stem has a single width
        for i, (first, rest) in enumerate(zip(self.first, self.rest)):
            opt = c.option[i]
            layers = [first[c.resolution, prev_w, c.width[i], opt[:, 0]]]
            for j in range(1, opt.shape[1]):
                layer = rest[c.resolution, c.width[i], np.maximum(opt[:, j], 0)]
                layers.append(np.where((opt[:, j] >= 0)[:, None], layer, 0.0))
            stages.append(np.stack(layers, axis=1))
            prev_w = c.width[i]
        return stages, prev_w

    def stage_costs(self, c: Choices, layers: list[np.ndarray], last_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-stage (flops, params) of shape (n, stages, 2), whole-net (flops, params) (n, 2)) from
        :meth:`layer_costs` of ``c``."""
        per_stage = np.stack([stage.sum(1) for stage in layers], axis=1)
        total = per_stage.sum(1) + self.stem[c.resolution] + self.head[c.resolution, last_w]
        return per_stage, total


@lru_cache(maxsize=8)
def _tables(space: SearchSpace) -> CostTables:
    return CostTables(space)


def _log_costs(space: SearchSpace, X: np.ndarray, c: Choices | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cost features, layer features) of ``X`` (decoded as ``c`` if given) from one pass over the layer tables."""
    tables, c = _tables(space), decode_choices(space, X) if c is None else c
    layers, last_w = tables.layer_costs(c)
    per_stage, total = tables.stage_costs(c, layers, last_w)
    cost = np.concatenate([per_stage.reshape(len(total), -1), total], axis=1)
    per_layer = np.concatenate([stage.reshape(len(total), -1) for stage in layers], axis=1)
    return np.log(np.maximum(cost, 1.0)).astype(np.float32), np.log1p(per_layer).astype(np.float32)


def cost_features(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """Per row of ``X``: log FLOPs and log params of each stage, then of the whole net (float32)."""
    return _log_costs(space, X)[0]


def layer_features(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """Per row of ``X``: log(1 + FLOPs) and log(1 + params) of every layer slot (0 where unused), so a model
    sees where in the network each layer's compute sits, not only per-stage sums."""
    return _log_costs(space, X)[1]


def composition_features(space: SearchSpace, X: np.ndarray, c: Choices | None = None) -> np.ndarray:
    """Per row of ``X`` (decoded as ``c`` if given): per stage, then for the whole net, the share of
    layers of each block type, and the share identical to the largest's and to the smallest's
    layer in the same slot (float32)."""
    c = decode_choices(space, X) if c is None else c
    cfg = space.config
    blocks = sorted({b for st in cfg.stages for b in st.blocks})
    anchors = (space.largest(), space.smallest())
    n = len(c.resolution)
    total = np.zeros((n, len(blocks) + len(anchors)))
    out = []
    for i, st in enumerate(cfg.stages):
        opts = space.layer_options(i)
        block_of = np.array([blocks.index(o.block) for o in opts])
        opt = c.option[i]
        used = opt >= 0
        counts = [((block_of[np.maximum(opt, 0)] == b) & used).sum(1) for b in range(len(blocks))]
        for anchor in anchors:  # a shallower anchor's last layer stands for its missing slots
            layers = anchor.stages[i].layers
            anchor_opt = np.array([opts.index(layers[min(j, len(layers) - 1)]) for j in range(opt.shape[1])])
            counts.append(((opt == anchor_opt[None, :]) & used).sum(1))
        counts = np.stack(counts, axis=1).astype(np.float64)
        total += counts
        out.append(counts / used.sum(1, keepdims=True))
    n_layers = sum((o >= 0).sum(1) for o in c.option)
    out.append(total / n_layers[:, None])
    return np.concatenate(out, axis=1).astype(np.float32)


def make_features(space: SearchSpace, X: np.ndarray, recipe: str) -> np.ndarray:
    """Model features from encodings ``X`` by ``recipe`` (one of :data:`FEATURE_RECIPES`)."""
    if recipe == "encoding":
        return np.asarray(X, dtype=np.float32)
    if recipe == "cost":
        return np.hstack([np.asarray(X, dtype=np.float32), cost_features(space, X)])
    if recipe == "layers":
        return np.hstack([np.asarray(X, dtype=np.float32), *_log_costs(space, X)])
    if recipe == "composition":
        c = decode_choices(space, X)
        return np.hstack([np.asarray(X, dtype=np.float32), *_log_costs(space, X, c), composition_features(space, X, c)])
    raise ValueError(f"unknown feature recipe {recipe!r}: expected one of {list(FEATURE_RECIPES)}")
