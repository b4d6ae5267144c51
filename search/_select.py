"""What search rounds measure: the seed (the space's extremes and a spread sample) and each
next batch (spread along every device's predicted front, optimistic where the predictor is
uncertain)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna

from ._objectives import _key
from ._pareto import pareto_front_2d, pareto_layers_2d


def _is_search_space(space) -> bool:
    """The project's SearchSpace (config with stages, largest/smallest, spread sampling)."""
    return hasattr(space, "config") and hasattr(getattr(space, "config"), "stages") and hasattr(space, "layer_options")


def space_extremes(space) -> list:
    """The archs a seed always measures: ``space.extremes()`` where the space defines it (a list,
    or a dict of named archs as SearchSpace's: largest, smallest, largest of each block type),
    else its largest and smallest where it has them. They bound every front, and a predictor
    cannot extrapolate to them."""
    if callable(getattr(space, "extremes", None)):
        found = space.extremes()
        return list(found.values()) if isinstance(found, dict) else list(found)
    return [getattr(space, m)() for m in ("largest", "smallest") if callable(getattr(space, m, None))]


def random_archs(space, n: int, rng: np.random.Generator) -> list:
    """Up to ``n`` distinct archs drawn through ``space.suggest`` with a random sampler (any space)."""
    from ._run import quiet_optuna

    with quiet_optuna():  # Optuna logs every study it creates at INFO
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=int(rng.integers(2**31))))
    seen: dict = {}
    for _ in range(20 * n):  # a tiny space has fewer distinct archs than asked
        if len(seen) >= n:
            break
        arch = space.suggest(study.ask())
        seen.setdefault(_key(arch), arch)
    return list(seen.values())


def seed_archs(space, n: int, rng: np.random.Generator) -> list:
    """``n`` distinct archs to measure first: the extremes, then a spread sample
    (``space.sample_spread(n, rng)`` where defined; on a SearchSpace the FLOPs- and block-spread
    sample of the accuracy datasets; else random archs through ``suggest``)."""
    if callable(getattr(space, "sample_spread", None)):
        spread = space.sample_spread(n, rng)
    elif _is_search_space(space):
        from predictors import sample_archs_spread

        spread = sample_archs_spread(space, n, rng)
    else:
        spread = random_archs(space, n, rng)
    out: dict = {}
    for arch in list(space_extremes(space)) + list(spread):
        if len(out) < n:
            out.setdefault(_key(arch), arch)
    return list(out.values())


def _spread_pick(cost: np.ndarray, idx: np.ndarray, k: int) -> list[int]:
    """``k`` of ``idx`` evenly spaced by rank of cost (both ends included)."""
    if k >= idx.size:
        return list(idx)
    order = idx[np.argsort(cost[idx], kind="stable")]
    return list(order[np.unique(np.linspace(0, idx.size - 1, k).round().astype(int))])


def select_batch(quality: np.ndarray, costs: np.ndarray, measured: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` unmeasured points to measure next.

    ``quality`` (n,) is maximised (measured points: their measured value; others: the
    prediction, optimistic by the predictor's std where wanted), ``costs`` (n, d) are minimised,
    one column per device. Per device, the non-dominated layers of all points are walked in
    order and the unmeasured points of each layer taken, a layer that does not fit whole
    being spread along cost; devices take turns, so each gets about ``k / d`` points."""
    k = min(k, int((~measured).sum()))
    picked: list[int] = []
    if k <= 0:
        return picked
    d = costs.shape[1]
    queues = []
    for j in range(d):
        # enough layers to hold every measured point and a few times this device's share
        layers = pareto_layers_2d(quality, costs[:, j], max_points=int(measured.sum()) + 4 * k)
        queue: list[int] = []
        share = -(-k // d)
        for layer in layers:
            fresh = layer[~measured[layer]]
            if not fresh.size:
                continue
            room = share - len(queue)
            queue += _spread_pick(costs[:, j], fresh, room) if fresh.size > room > 0 else list(fresh)
            if len(queue) >= share:
                break
        # what the share did not take stays available to other devices' turns
        chosen = set(queue)
        rest = [i for layer in layers for i in layer if not measured[i] and i not in chosen]
        queues.append(queue + rest)
    taken = set()
    pos = [0] * d
    while len(picked) < k:
        progress = False
        for j in range(d):
            q = queues[j]
            while pos[j] < len(q) and q[pos[j]] in taken:
                pos[j] += 1
            if pos[j] < len(q) and len(picked) < k:
                picked.append(q[pos[j]])
                taken.add(q[pos[j]])
                progress = True
        if not progress:
            break
    return picked


def distinct(archs: Sequence[Any], skip: set) -> list:
    """``archs`` without repeats and without those whose key is in ``skip``, in order."""
    out: dict = {}
    for a in archs:
        k = _key(a)
        if k not in skip:
            out.setdefault(k, a)
    return list(out.values())


def front_improvement(quality: np.ndarray, cost: np.ndarray, front_q: np.ndarray, front_c: np.ndarray,
                      ref_quality: float, ref_cost: float) -> np.ndarray:
    """Hypervolume each point (quality, cost) alone would add to the front of the points
    (front_q, front_c), up to the reference point (maximise quality, minimise cost)."""
    order = pareto_front_2d(front_q, front_c) if len(front_q) else np.zeros(0, np.int64)
    fq, fc = np.asarray(front_q, float)[order], np.asarray(front_c, float)[order]
    inside = fc < ref_cost
    fq, fc = fq[inside], fc[inside]
    # the front's best quality is a step function of cost: ref_quality before its first point
    starts = np.r_[-np.inf, fc]
    ends = np.r_[fc, ref_cost]
    level = np.r_[ref_quality, np.maximum(fq, ref_quality)]
    q, c = np.asarray(quality, float)[:, None], np.asarray(cost, float)[:, None]
    width = np.clip(ends[None, :] - np.maximum(starts[None, :], c), 0, None)
    gain = (width * np.clip(q - level[None, :], 0, None)).sum(1)
    return np.where(np.isfinite(gain), gain, 0.0)


def _front_steps(front_q: np.ndarray, front_c: np.ndarray, ref_quality: float, ref_cost: float):
    """The measured front as a step function of cost, up to the reference cost: (starts, ends,
    level) of each step; before the cheapest front point the level is ``ref_quality``."""
    order = pareto_front_2d(front_q, front_c) if len(front_q) else np.zeros(0, np.int64)
    fq, fc = np.asarray(front_q, float)[order], np.asarray(front_c, float)[order]
    inside = fc < ref_cost
    fq, fc = fq[inside], fc[inside]
    return np.r_[-np.inf, fc], np.r_[fc, ref_cost], np.r_[ref_quality, np.maximum(fq, ref_quality)]


def expected_front_improvement(mean: np.ndarray, sigma: np.ndarray, cost: np.ndarray, front_q: np.ndarray,
                               front_c: np.ndarray, ref_quality: float, ref_cost: float) -> np.ndarray:
    """Expected hypervolume each point would add to the front of the points (front_q, front_c),
    its quality being normal (``mean``, ``sigma``) and its cost exact (maximise quality,
    minimise cost, up to the reference point). With ``sigma`` 0 it is :func:`front_improvement`."""
    from scipy.stats import norm

    starts, ends, level = _front_steps(front_q, front_c, ref_quality, ref_cost)
    mu, sd = np.asarray(mean, float)[:, None], np.maximum(np.asarray(sigma, float), 1e-12)[:, None]
    c = np.asarray(cost, float)[:, None]
    width = np.clip(ends[None, :] - np.maximum(starts[None, :], c), 0, None)
    z = (mu - level[None, :]) / sd
    gain = (width * ((mu - level[None, :]) * norm.cdf(z) + sd * norm.pdf(z))).sum(1)
    return np.where(np.isfinite(gain), gain, 0.0)


def select_by_expected_improvement(mean: np.ndarray, sigma: np.ndarray, costs: np.ndarray, measured: np.ndarray,
                                   k: int) -> list[int]:
    """Up to ``k`` unmeasured points by expected hypervolume improvement of each device's front.

    ``mean`` (n,): measured points' values and the others' predictions; ``sigma`` (n,): the
    predictions' error (the measured points' is not read). Devices take turns; each turn picks
    the point with the largest expected improvement (:func:`expected_front_improvement`) of the
    front of the measured points and of the points picked so far, those believed at their mean,
    so that later picks go elsewhere. The reference point is the measured points' worst quality
    and largest cost on that device: a point beyond the front's costliest (most accurate) point
    still extends it. A device stops when no point adds anything."""
    free = ~measured & np.isfinite(mean)
    known = measured & np.isfinite(mean)
    if not known.any() or not free.any():
        return []
    refs = [(float(np.min(mean[known])), float(np.max(costs[known, j]))) for j in range(costs.shape[1])]

    def gain(j: int, m: np.ndarray, free: np.ndarray) -> np.ndarray:
        g = np.zeros(len(mean))
        g[free] = expected_front_improvement(mean[free], sigma[free], costs[free, j], mean[m], costs[m, j], *refs[j])
        return g

    return _take_turns(gain, known, free, costs.shape[1], k)


def _take_turns(gain, known: np.ndarray, free: np.ndarray, devices: int, k: int) -> list[int]:
    """Up to ``k`` picks, devices taking turns: each turn picks the free point of largest
    ``gain(device, members, free)``, where members are the known points and the picks so far; a
    device whose best gain is not positive is done."""
    picked: list[int] = []
    done = np.zeros(devices, bool)
    members = list(np.flatnonzero(known))
    while len(picked) < k and not done.all():
        for j in range(devices):
            if done[j] or len(picked) >= k:
                continue
            g = gain(j, np.asarray(members, np.int64), free)
            best = int(np.argmax(g))
            if g[best] <= 0:
                done[j] = True
                continue
            picked.append(best)
            free[best] = False
            members.append(best)
    return picked


def select_by_improvement(optimistic: np.ndarray, believed: np.ndarray, costs: np.ndarray, measured: np.ndarray,
                          k: int) -> list[int]:
    """Up to ``k`` unmeasured points that would add the most hypervolume to each device's front.

    Devices take turns; each turn picks the point whose ``optimistic`` quality (the prediction
    raised by its uncertainty) adds the most to the device's front of the measured points and
    of the points picked so far, those at their ``believed`` (mean) quality, so that later
    picks go to other gaps of the front. A device stops when no point adds anything. The
    reference point is the measured points' worst quality and largest cost on that device."""
    free = ~measured & np.isfinite(optimistic)
    known = measured & np.isfinite(believed)
    if not known.any() or not free.any():
        return []
    refs = [(float(np.min(believed[known])), float(np.max(costs[known, j]))) for j in range(costs.shape[1])]

    def gain(j: int, m: np.ndarray, free: np.ndarray) -> np.ndarray:
        g = front_improvement(optimistic, costs[:, j], believed[m], costs[m, j], *refs[j])
        g[~free] = 0.0
        return g

    return _take_turns(gain, known, free, costs.shape[1], k)
