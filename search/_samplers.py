"""Optuna samplers by name, always pinned explicitly (Optuna 5 defaults multi-objective to TPE).

NSGA-II and NSGA-III keep Optuna's algorithm; only their bookkeeping is made incremental.
Stock ``get_trial_generation`` and ``get_parent_population`` re-scan every trial of the study
on every ``ask`` (and deep-copy the study's attributes), which makes a run quadratic; the
intersection search space is recomputed with Optuna's slow distribution equality. All three
depend only on completed trials, which never change, so each process takes in each
completed trial once. ``tests/test_search.py`` checks that the proposals stay identical to
stock NSGA-II's; ``experiments/results/search/search_speed.md`` measures the gain.
"""

from __future__ import annotations

from collections import Counter
import optuna
from optuna.samplers import (BaseSampler, GPSampler, NSGAIIISampler, NSGAIISampler, RandomSampler,
                             TPESampler)
from optuna.trial import FrozenTrial, TrialState

from ._errors import SearchError

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random")
DEFAULT_POPULATION = 100  # without a trial count; with one, see budget_population
MIN_POPULATION, GENERATIONS = 10, 10
_LIVE = (TrialState.RUNNING, TrialState.WAITING)


class _Completed:
    """What this process knows of the study's completed trials, updated incrementally: how
    many there are per GA generation, and the intersection of their parameter distributions."""

    def __init__(self, key: str):
        self.key = key
        self.next_index = 0
        self.unfinished: set[int] = set()
        self.counts: Counter = Counter()
        self.space: dict | None = None

    def update(self, trials: list[FrozenTrial]) -> None:
        """Take in trials completed since the last call (``trials`` ordered by number)."""
        if trials and trials[-1].number != len(trials) - 1:  # not indexable by number: start over
            self.__init__(self.key)
            trials = sorted(trials, key=lambda t: t.number)
        for i in sorted(self.unfinished) + list(range(self.next_index, len(trials))):
            t = trials[i]
            if t.state == TrialState.COMPLETE:
                self.counts[t.system_attrs.get(self.key, -1)] += 1
                self.space = dict(t.distributions) if self.space is None else {
                    n: d for n, d in self.space.items() if _same(t.distributions.get(n), d)}
                self.unfinished.discard(i)
            elif t.state in _LIVE:
                self.unfinished.add(i)
            else:
                self.unfinished.discard(i)
        self.next_index = max(self.next_index, len(trials))

    @property
    def total(self) -> int:
        """Completed trials taken in."""
        return sum(self.counts.values())

    def current(self) -> tuple[int, int]:
        """(highest generation with a completed trial (at least 0), its completed count)."""
        top = max([g for g in self.counts if g >= 0], default=0)
        return top, self.counts.get(top, 0)


def _same(a, b) -> bool:
    """Optuna's distribution equality, with a fast path: comparing attribute dicts compares
    categorical choices in C; only a difference (NaN choices) needs Optuna's own ``==``."""
    return a is not None and type(a) is type(b) and (a.__dict__ == b.__dict__ or a == b)


class _IncrementalGenerations:
    """Mixin for Optuna's GA samplers: same generations and parents, without the rescans."""

    def _bookkeeping(self, study) -> tuple[_Completed, dict]:
        state = self.__dict__.setdefault("_hwnas_books", {})
        if study._study_id not in state:
            state[study._study_id] = (_Completed(self._get_generation_key()), {})
        return state[study._study_id]

    def get_trial_generation(self, study, trial: FrozenTrial) -> int:
        """As Optuna's, counting completed trials incrementally."""
        generation = trial.system_attrs.get(self._get_generation_key(), None)
        if generation is not None:
            return generation
        counted, _ = self._bookkeeping(study)
        counted.update(study._get_trials(deepcopy=False))
        top, count = counted.current()
        generation = top if count < self._population_size else top + 1
        study._storage.set_trial_system_attr(trial._trial_id, self._get_generation_key(), generation)
        return generation

    def get_parent_population(self, study, generation: int) -> list[FrozenTrial]:
        """As Optuna's; a generation's parents (complete trials) are fetched once per process."""
        _, parents = self._bookkeeping(study)
        if generation in parents:
            return parents[generation]
        selected = super().get_parent_population(study, generation)
        # Optuna returns the freshly selected order once, then (from its cache) trial order.
        parents[generation] = sorted(selected, key=lambda t: t.number)
        return selected

    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict:
        """As Optuna's (the intersection of the completed trials' distributions, by name, without
        single-valued ones), kept up to date with each completed trial instead of recomputed."""
        counted, _ = self._bookkeeping(study)
        counted.update(study._get_trials(deepcopy=False))
        cached = self.__dict__.get("_hwnas_space")
        if cached is None or cached[0] != (study._study_id, counted.total):
            space = {n: d for n, d in sorted((counted.space or {}).items()) if not d.single()}
            self._hwnas_space = ((study._study_id, counted.total), space)
        return self._hwnas_space[1]


class _NSGAII(_IncrementalGenerations, NSGAIISampler):
    """Optuna's NSGA-II with incremental generation bookkeeping."""


class _NSGAIII(_IncrementalGenerations, NSGAIIISampler):
    """Optuna's NSGA-III with incremental generation bookkeeping."""


# Keys under which the GA samplers store generations must stay Optuna's, so a study
# started with stock NSGA-II resumes with ours and the other way round.
for _cls, _base in ((_NSGAII, NSGAIISampler), (_NSGAIII, NSGAIIISampler)):
    _cls._GENERATION_KEY = _base._GENERATION_KEY
    _cls._PARENT_CACHE_KEY_PREFIX = _base._PARENT_CACHE_KEY_PREFIX


def check_sampler(sampler, population_size: int | None = None) -> None:
    """Raise :class:`SearchError` unless ``sampler`` is a known name or a sampler instance, and
    ``population_size`` is None or an integer >= 2 given with a name."""
    if isinstance(sampler, BaseSampler):
        if population_size is not None:  # silently ignoring it would run another population than asked
            raise SearchError(f"population size {population_size!r} was given with a sampler instance "
                              f"({type(sampler).__name__}): expected it set on the instance")
        return
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise SearchError(f"unknown sampler {sampler!r}: expected one of {list(SAMPLERS)} or an Optuna sampler instance")
    if population_size is not None and (not isinstance(population_size, int) or population_size < 2):
        raise SearchError(f"population size {population_size!r} is invalid: expected an integer >= 2")


def budget_population(n_trials: int | None) -> int:
    """GA population for a run of ``n_trials``: a tenth of it, between 10 and 100, so that a
    small budget still gets ~10 generations of selection (a 200-trial run with the old fixed
    100 had two: ``experiments/results/search/search_rounds.md``). Without a count: 100."""
    if n_trials is None:
        return DEFAULT_POPULATION
    return int(min(DEFAULT_POPULATION, max(MIN_POPULATION, n_trials // GENERATIONS)))


def make_sampler(name: str | BaseSampler = "nsga2", *, seed: int | None = None, population_size: int | None = None,
                 n_trials: int | None = None, mutation_prob: float | None = None) -> BaseSampler:
    """An Optuna sampler by name: ``nsga2`` (default), ``nsga3``, ``tpe``, ``gp`` or ``random``;
    a sampler instance (any :class:`optuna.samplers.BaseSampler`) is returned as it is.

    Budgets reach the samplers as trial constraints (``trial.set_constraint``, Optuna 5's
    replacement of ``constraints_func``); all but ``random`` use them (random's fronts are
    still filtered to feasible trials). ``population_size`` applies to the GA samplers (default:
    :func:`budget_population` of ``n_trials``, the first generation being one random population);
    ``mutation_prob`` is the per-gene mutation probability of a child (default Optuna's 1 / genes).
    """
    check_sampler(name, population_size)
    if isinstance(name, BaseSampler):
        return name
    if name in ("nsga2", "nsga3"):
        cls = _NSGAII if name == "nsga2" else _NSGAIII
        if mutation_prob is not None and not (isinstance(mutation_prob, (int, float)) and 0 <= mutation_prob <= 1):
            raise SearchError(f"mutation probability {mutation_prob!r} is invalid: expected a number in [0, 1]")
        return cls(population_size=population_size or budget_population(n_trials), mutation_prob=mutation_prob, seed=seed)
    if name == "tpe":
        # multivariate TPE models the genes jointly; constant liar spreads a batch's asks.
        return TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "gp":
        return GPSampler(seed=seed)
    return RandomSampler(seed=seed)


def default_batch_size(sampler: BaseSampler) -> int:
    """How many trials to ask before telling: a GA generation, a few for model-based samplers."""
    if isinstance(sampler, optuna.samplers.BaseGASampler):
        return sampler.population_size or DEFAULT_POPULATION
    if isinstance(sampler, RandomSampler):
        return 256
    if isinstance(sampler, TPESampler):
        return 8
    return 1
