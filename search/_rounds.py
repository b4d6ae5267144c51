"""Search in rounds, for objectives that are expensive to measure (a supernet evaluation, a
device measurement, a user's own training run)::

    result = search_rounds(space, measure=[measured_accuracy(evaluate)], costs=[table_latency(cpu)], queries=200)
    fronts = result.fronts(space)          # made of measured points only

Round 0 measures a seed (the space's extremes and a spread sample). Every later round fits one
predictor per measured objective on everything measured so far, searches the space on the
predictions (:func:`run_search`, cheap objectives exact), and measures the next batch: spread
along every device's predicted front, walked by non-dominated layers, with the predicted
quality raised by ``explore`` x the predictor's std, a quarter of it from mutants of the most
accurate measured archs (a local search where one under-rated arch costs the most). The budget counts distinct architectures;
each is measured once (a cache by architecture, which ``known`` can pre-fill from earlier runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from optuna.trial import TrialState

from ._errors import SearchError
from ._fronts import DeviceFront, Trials, device_fronts
from ._loop import budget_violations, score_batch
from ._objectives import (Budget, Objective, _key, _PredictedAccuracy, check_budgets, check_objectives,
                          limit_native_threads)
from ._run import _positive_int, run_search
from ._select import (distinct, random_archs, seed_archs, select_batch, select_by_expected_improvement,
                      select_by_improvement)

DEFAULT_ROUNDS = 8  # small batches: each refit sees what the last batch taught
SEED_SHARE = 0.3  # of the budget measured before the first fit
DEFAULT_INNER_TRIALS = 1500
PICKS = ("layers", "ehvi")
DEFAULT_PICK = "layers"
CV_FOLDS = 3  # the first round's prediction error, before any batch was predicted and then measured
LOCAL_TOP, LOCAL_MUTANTS, LOCAL_PROB = 5, 60, 0.1  # local search: mutants of the 5 most accurate measured archs
# a quarter of each batch from them: +0.06 hypervolume on cifar_pool, +0.001-0.007 on two other datasets
# (experiments/results/search/rounds_ablation/README.md)
DEFAULT_LOCAL_SHARE = 0.25


@dataclass
class RoundsResult:
    """Every measured architecture with its objective values (measured objectives first, then
    the cheap ones), the round that measured it (0: seed, -1: given in ``known``) and a log per round."""

    archs: list
    values: np.ndarray
    names: list[str]
    directions: list[str]
    budgets: dict[str, float]
    round_of: np.ndarray
    log: list[dict] = field(default_factory=list)
    predictors: dict = field(default_factory=dict)
    measured_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.archs)

    def trials(self) -> Trials:
        """The measured points as :class:`Trials` (numbered in measurement order), for reports."""
        finite = np.isfinite(self.values).all(axis=1)
        budgets = [Budget(n, v) for n, v in self.budgets.items()]
        objs = [Objective(n, d, _unused) for n, d in zip(self.names, self.directions)]
        feasible = finite & (budget_violations(self.values, objs, budgets) <= 0).all(axis=1)
        return Trials(np.arange(len(self.archs), dtype=np.int64), [{} for _ in self.archs], self.values.copy(),
                      list(self.names), list(self.directions), feasible, dict(self.budgets), archs=list(self.archs))

    def fronts(self, space) -> dict[str, DeviceFront]:
        """The front of every device, made of measured points (see :func:`device_fronts`); the
        measured objectives' values are marked measured on every point."""
        fronts = device_fronts(self.trials(), space)
        for front in fronts.values():
            for p in front.points:
                p.measured.update({n: p.predicted[n] for n in self.measured_names})
        return fronts

    def records(self) -> list[dict]:
        """Every measured point: arch, round and each objective's value (JSON-ready)."""
        return [{"arch": str(a), "round": int(r), **{n: float(v) for n, v in zip(self.names, row)}}
                for a, r, row in zip(self.archs, self.round_of, self.values)]


def _unused(archs):  # an Objective needs a score function; Trials only reads names and directions
    raise SearchError("internal: a RoundsResult objective was scored")


class _Optimistic:
    """Predicted mean raised by ``explore`` x the predictor's std on the side that helps
    (a class, not a closure, so Ray can ship it)."""

    def __init__(self, predictor, space, explore: float, sign: float):
        self.predictor, self.space, self.explore, self.sign = predictor, space, explore, sign

    def __call__(self, archs):
        with limit_native_threads(1):
            mean, std = self.predictor.predict(self.space.encode_many(archs))
        return mean + self.sign * self.explore * np.nan_to_num(std)


def predicted_objective(objective: Objective, predictor, space, explore: float = 0.0) -> Objective:
    """``objective`` predicted by ``predictor`` instead of measured, for the inner search: its
    mean, made optimistic by ``explore`` x its std (0: the mean alone)."""
    sign = 1.0 if objective.direction == "maximize" else -1.0
    score = _Optimistic(predictor, space, explore, sign) if explore else _PredictedAccuracy(predictor, space, 1)
    return Objective(objective.name, objective.direction, score, device=objective.device, unit=objective.unit, cache=True)


def _make_predictor(predictor, space, seed: int, bootstrap: bool = False):
    """An unfitted predictor: ``predictor(space)``, or the named kind; with ``bootstrap`` its
    members are fitted on bootstrap resamples where the kind has them (the GBT)."""
    if callable(predictor):
        return predictor(space)
    from predictors import make_predictor, predictor_kinds

    kind = predictor_kinds().get(predictor)
    extra = {"bootstrap": True} if bootstrap and kind is not None and "bootstrap" in kind.default_hparams() else {}
    return make_predictor(predictor, space, seed=seed, **extra)


class _Measured:
    """The cache of measured architectures: values by arch key, in measurement order."""

    def __init__(self, n_objectives: int):
        self.archs: list = []
        self.rows: list[np.ndarray] = []
        self.round_of: list[int] = []
        self.index: dict = {}
        self.n = n_objectives

    def add(self, archs: Sequence[Any], values: np.ndarray, round_no: int) -> None:
        """Record ``archs`` (new ones only) with their values (len(archs), n)."""
        for a, v in zip(archs, values):
            k = _key(a)
            if k in self.index:
                continue
            self.index[k] = len(self.archs)
            self.archs.append(a)
            self.rows.append(np.asarray(v, float))
            self.round_of.append(round_no)

    def values(self) -> np.ndarray:
        """(n measured, n objectives)."""
        return np.stack(self.rows) if self.rows else np.zeros((0, self.n))


def search_rounds(space, measure: Sequence[Objective], costs: Sequence[Objective], queries: int, *,
                  budgets: Sequence[Budget] = (), predictor: str | Callable = "gbt", seed_size: int | None = None,
                  rounds: int = DEFAULT_ROUNDS, inner_trials: int = DEFAULT_INNER_TRIALS, sampler: str = "nsga2",
                  explore: float = 1.0, improve_share: float = 0.0, bootstrap: bool = False, pick: str = DEFAULT_PICK,
                  local_share: float = DEFAULT_LOCAL_SHARE, seed: int = 0, known: Mapping[Any, Sequence[float]] | None = None,
                  progress: bool = False, on_round: Callable[[RoundsResult], None] | None = None) -> RoundsResult:
    """Measure at most ``queries`` distinct architectures, chosen in rounds; returns all of them.

    ``measure``: the expensive objectives, each measured on every chosen arch and predicted by a
    predictor of kind ``predictor`` (a name from ``predictors.PREDICTORS``, or ``space ->
    unfitted predictor``) between rounds. ``costs``: cheap objectives scored exactly (latency
    tables, FLOPs). ``seed_size`` archs are measured first (default: 30% of the budget), the rest
    in ``rounds`` equal batches; each round's inner search runs ``inner_trials`` trials with
    ``sampler`` (sized to them, see :func:`make_sampler`) on the optimistic predictions
    (mean + ``explore`` x std). Each batch: ``improve_share`` of it by optimistic hypervolume
    improvement of the measured fronts, the rest spread along the predicted fronts' layers.
    ``local_share`` of it (after those): the best predicted of the mutants of the most accurate
    measured archs within the budgets (a local search around the measured top, on spaces with
    ``mutate``; 0 turns it off). ``pick``: how the rest of each batch is chosen: ``layers`` (default) walks each device's
    predicted (quality, cost) plane by non-dominated layers, spread along cost; ``ehvi`` takes the
    largest expected hypervolume improvements of the measured fronts, the prediction error being
    the RMSE of the earlier batches' predictions against their measurements (cross-validated in
    the first round). ``bootstrap``: a named predictor's members are fitted on bootstrap resamples (the GBT), so
    that its std is a real uncertainty. Both are off by default: on the ``cifar_pool`` benchmark
    the exploration they bring measured fewer true-front subnets in 200 queries
    (``experiments/results/search/search_rounds_explore.md``). ``known``: arch -> values of the
    ``measure`` objectives already measured (reused, not counted). ``on_round`` gets the result
    so far after every round (e.g. to save it).
    """
    measure, costs = list(measure), list(costs)
    objectives = check_objectives(measure + costs)
    budgets = check_budgets(budgets, objectives)
    queries = _positive_int(queries, "query budget")
    rounds = _positive_int(rounds, "number of rounds")
    inner_trials = _positive_int(inner_trials, "number of inner trials")
    for share, what in ((improve_share, "improve share"), (local_share, "local share")):
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise SearchError(f"{what} {share!r} is invalid: expected a number in [0, 1]")
    if improve_share + local_share > 1:
        raise SearchError(f"improve share {improve_share} + local share {local_share} is above 1: expected at most 1")
    if pick not in PICKS:
        raise SearchError(f"unknown batch pick {pick!r}: expected one of {list(PICKS)}")
    if not measure:
        raise SearchError("no objective to measure: expected at least one in measure= (e.g. measured_accuracy)")
    if not any(o.direction == "maximize" for o in objectives):
        raise SearchError(f"no maximised objective among {[o.name for o in objectives]}: a front needs one (e.g. accuracy)")
    seed_n = _positive_int(seed_size, "seed size") if seed_size is not None else max(1, round(SEED_SHARE * queries))
    if seed_n > queries:
        raise SearchError(f"seed size {seed_n} is above the query budget {queries}: expected at most the budget")
    rng = np.random.default_rng(seed)
    cache = _Measured(len(objectives))
    names = [o.name for o in objectives]
    result = RoundsResult([], np.zeros((0, len(names))), names, [o.direction for o in objectives],
                          {b.objective: b.limit for b in budgets}, np.zeros(0, np.int64),
                          measured_names=[o.name for o in measure])
    if known:
        karchs = list(known)
        kvals = np.asarray([list(known[a]) for a in karchs], float).reshape(len(karchs), len(measure))
        cache.add(karchs, np.hstack([kvals, score_batch(costs, karchs)]), -1)

    def spent() -> int:
        return sum(1 for r in cache.round_of if r >= 0)

    errors: list[np.ndarray] = []  # measured - predicted, per measured objective, of every batch picked by a fit

    def run_round(round_no: int, archs: list, info: dict, predicted: np.ndarray | None = None) -> None:
        t0 = time.perf_counter()
        keep = distinct(archs, set(cache.index))[:queries - spent()]
        if keep:
            values = score_batch(measure + costs, keep)  # an arch whose measurement failed is not costed
            cache.add(keep, values, round_no)
            if predicted is not None:
                row = {_key(a): p for a, p in zip(archs, predicted)}
                errors.append(values[:, :len(measure)] - np.stack([row[_key(a)] for a in keep]))
        archs = keep
        info.update(round=round_no, measured=len(archs), total=spent(), measure_s=round(time.perf_counter() - t0, 2))
        result.archs, result.values = list(cache.archs), cache.values()
        result.round_of = np.asarray(cache.round_of, np.int64)
        result.log.append(info)
        if progress:
            print(f"round {round_no}: measured {len(archs)} ({spent()}/{queries})", flush=True)
        if on_round is not None:
            on_round(result)

    run_round(0, seed_archs(space, seed_n, rng), {})
    batch = math.ceil((queries - spent()) / rounds) if queries > spent() else 0
    for round_no in range(1, rounds + 1):
        if spent() >= queries:
            break
        info: dict = {}
        picked, predicted = _next_batch(space, measure, costs, budgets, cache, min(batch, queries - spent()), predictor,
                                        inner_trials, sampler, explore, improve_share, seed + round_no, rng, info,
                                        result, bootstrap, pick, errors, local_share)
        run_round(round_no, picked, info, predicted)
    return result


def _fit_predictors(space, measure, cache: _Measured, predictor, seed: int, bootstrap: bool = False) -> dict:
    values = cache.values()
    X = np.asarray(space.encode_many(cache.archs), float)
    fitted = {}
    for j, o in enumerate(measure):
        ok = np.isfinite(values[:, j])
        if ok.sum() < 4:
            raise SearchError(f"objective {o.name!r} has {int(ok.sum())} finite measurements: a predictor needs "
                              "at least 4 (a larger seed size, or fix the measurement)")
        fitted[o.name] = _make_predictor(predictor, space, seed, bootstrap).fit(X[ok], values[ok, j])
    return fitted


def prediction_error(space, measure, cache: _Measured, predictor, seed: int, errors: Sequence[np.ndarray],
                     bootstrap: bool = False, folds: int = CV_FOLDS) -> np.ndarray:
    """The root mean square error of the predictions, per measured objective: of the batches
    measured after being predicted (``errors``, the error that matters: on the picks), else,
    before any, of a ``folds``-fold cross-validation on the measured archs."""
    if errors:
        e = np.vstack(errors)
        return np.asarray([np.sqrt(np.nanmean(e[:, j] ** 2)) if np.isfinite(e[:, j]).any() else 0.0
                           for j in range(e.shape[1])])
    values = cache.values()
    X = np.asarray(space.encode_many(cache.archs), float)
    out = np.zeros(len(measure))
    for j in range(len(measure)):
        ok = np.flatnonzero(np.isfinite(values[:, j]))
        if ok.size < 2 * folds:
            continue
        fold = np.random.default_rng(seed).permutation(ok.size) % folds
        sq = []
        for f in range(folds):
            train, test = ok[fold != f], ok[fold == f]
            model = _make_predictor(predictor, space, seed, bootstrap).fit(X[train], values[train, j])
            sq.append((model.predict(X[test])[0] - values[test, j]) ** 2)
        out[j] = float(np.sqrt(np.concatenate(sq).mean()))
    return out


def _next_batch(space, measure, costs, budgets, cache: _Measured, k: int, predictor, inner_trials: int, sampler: str,
                explore: float, improve_share: float, seed: int, rng, info: dict, result: RoundsResult,
                bootstrap: bool = False, pick: str = DEFAULT_PICK,
                errors: Sequence[np.ndarray] = (), local_share: float = 0.0) -> tuple[list, np.ndarray]:
    """Fit, search the predictions, and choose ``k`` unmeasured archs; returns them and their
    predicted values of the measured objectives."""
    t0 = time.perf_counter()
    sigma = prediction_error(space, measure, cache, predictor, seed, errors, bootstrap) if pick == "ehvi" else None
    fitted = _fit_predictors(space, measure, cache, predictor, seed, bootstrap)
    result.predictors = fitted
    t1 = time.perf_counter()
    predicted = [predicted_objective(o, fitted[o.name], space, explore) for o in measure]
    study = run_search(space, predicted + list(costs), inner_trials, budgets=budgets, sampler=sampler, seed=seed,
                       progress=False, seed_archs=_measured_front(space, cache, list(measure) + list(costs), budgets))
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    candidates = distinct([space.from_params(t.params) for t in done], set(cache.index))
    if len(candidates) < k:  # the predictions agree on few archs: fill up at random
        candidates += distinct(random_archs(space, 4 * k, rng), set(cache.index) | {_key(a) for a in candidates})
    local = distinct(local_mutants(space, cache, list(measure) + list(costs), budgets, rng) if local_share else [],
                     set(cache.index) | {_key(a) for a in candidates})
    t2 = time.perf_counter()
    picked, predicted = _choose(space, measure, costs, budgets, cache, candidates + local, fitted, k, explore,
                                improve_share, pick, sigma, local=(len(candidates), int(round(local_share * k))))
    info.update(fit_s=round(t1 - t0, 2), search_s=round(t2 - t1, 2), candidates=len(candidates))
    if sigma is not None:
        info["prediction_rmse"] = [round(float(x), 5) for x in sigma]
    return picked, predicted


def _measured_front(space, cache: _Measured, objectives, budgets, share: float = 0.5) -> list:
    """The measured archs on the best non-dominated layers of every device, up to ``share`` of a
    default GA population, so that the inner search starts from the measured front (on spaces
    with ``to_params``, which ``run_search(seed_archs=...)`` needs; else none)."""
    from ._samplers import budget_population

    if not cache.archs or not hasattr(space, "to_params"):
        return []
    quality, costs, _ = _planes(cache.values(), objectives, budgets)
    picked = select_batch(quality, costs, np.zeros(len(quality), bool), int(share * budget_population(None)))
    return [cache.archs[i] for i in picked]


def local_mutants(space, cache: _Measured, objectives, budgets, rng, top: int = LOCAL_TOP,
                  per: int = LOCAL_MUTANTS, prob: float = LOCAL_PROB) -> list:
    """Mutants (``space.mutate``) of the ``top`` most accurate measured archs within the budgets: a
    local search around the measured top of the front, where a predictor that under-rates one arch
    loses the most hypervolume (none on spaces without ``mutate``)."""
    if not callable(getattr(space, "mutate", None)) or not cache.archs:
        return []
    quality, _, ok = _planes(cache.values(), list(objectives), budgets)
    best = [i for i in np.argsort(-quality, kind="stable")[:top] if ok[i]]
    return [space.mutate(cache.archs[i], rng, prob) for i in best for _ in range(per)]


def _choose(space, measure, costs, budgets, cache: _Measured, candidates: list, fitted: dict, k: int,
            explore: float, improve_share: float, pick: str = DEFAULT_PICK,
            sigma: np.ndarray | None = None, local: tuple[int, int] = (0, 0)) -> tuple[list, np.ndarray]:
    """The batch: measured points with their values and candidates with predicted ones. First
    up to ``improve_share`` of ``k`` by optimistic hypervolume improvement of each device's
    measured front (:func:`select_by_improvement`), the rest by ``pick``: ``layers`` walks each
    device's (quality, cost) plane by non-dominated layers (:func:`select_batch`), optimistic:
    raised by ``explore`` x the std; ``ehvi`` takes the largest expected hypervolume
    improvements (:func:`select_by_expected_improvement`), the quality's error being the
    predictor's std and ``sigma`` (the predictions' error, per measured objective) combined.
    ``local``: (index of the first local mutant in ``candidates``, picks among them by optimistic
    quality), taken after the improvement picks.
    Returns the picks and their predicted values of the measured objectives."""
    objectives = list(measure) + list(costs)
    X = np.asarray(space.encode_many(candidates), float) if candidates else np.zeros((0, 0))
    mean, hopeful = np.zeros((len(candidates), len(objectives))), np.zeros((len(candidates), len(objectives)))
    spread = np.zeros((len(candidates), len(objectives)))
    for j, o in enumerate(measure):
        mu, std = fitted[o.name].predict(X) if candidates else (np.zeros(0), np.zeros(0))
        sign = 1.0 if o.direction == "maximize" else -1.0
        mean[:, j], hopeful[:, j] = mu, mu + sign * explore * np.nan_to_num(std)  # the side that would help
        spread[:, j] = np.sqrt(np.nan_to_num(std) ** 2 + (0.0 if sigma is None else float(sigma[j])) ** 2)
    mean[:, len(measure):] = hopeful[:, len(measure):] = score_batch(costs, candidates)
    measured = np.r_[np.ones(len(cache.archs), bool), np.zeros(len(candidates), bool)]
    planes = [_planes(np.vstack([cache.values(), v]), objectives, budgets) for v in (mean, hopeful)]
    (believed, cost_cols, ok), (optimistic, _, _) = planes
    picked = select_by_improvement(optimistic, believed, cost_cols, measured | ~ok, int(round(improve_share * k)))
    taken = measured | ~ok
    taken[picked] = True
    first_local, n_local = local
    if n_local:
        rows = np.arange(len(cache.archs) + first_local, len(taken))
        rows = rows[~taken[rows]]
        more = [int(i) for i in rows[np.argsort(-optimistic[rows], kind="stable")][:n_local]]
        taken[more] = True
        picked += more
    if pick == "ehvi":
        names = [o.name for o in objectives]
        q = names.index(Trials(np.zeros(0), [], np.zeros((0, len(names))), names,
                               [o.direction for o in objectives], np.zeros(0, bool), {}).quality)
        sd = np.r_[np.zeros(len(cache.archs)), spread[:, q]]
        more = select_by_expected_improvement(believed, sd, cost_cols, taken, k - len(picked))
        taken[more] = True
        picked += more
    picked += select_batch(optimistic, cost_cols, taken, k - len(picked))
    rows = [i - len(cache.archs) for i in picked]
    return [candidates[i] for i in rows], mean[rows, :len(measure)]


def _planes(values: np.ndarray, objectives, budgets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, cost per device, feasible) of ``values``; infeasible points get quality -inf, cost inf."""
    ok = np.isfinite(values).all(axis=1) & (budget_violations(values, objectives, budgets) <= 0).all(axis=1)
    trials = Trials(np.arange(len(values)), [], values, [o.name for o in objectives],
                    [o.direction for o in objectives], ok, {})
    quality = np.where(ok, trials.column(trials.quality), -np.inf)
    cost_cols = np.stack([trials.column(c) for c in trials.costs()], axis=1)
    return quality, np.where(ok[:, None], cost_cols, np.inf), ok
