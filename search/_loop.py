"""The worker loop: ask a batch of trials, score it at once, tell, until the study holds exactly
``n_trials`` completed trials (shared with any number of other workers on the same storage), or
has spent ``max_evaluations`` evaluations.

Each distinct architecture is scored once per study: a trial that proposes an arch the study
already scored (GA samplers re-propose) is told the stored values and marked ``hwnas:cached``;
it counts as a trial, not as an evaluation (:class:`ScoreCache`, rebuilt from the storage on resume).

Exactness: a worker only asks for what is still missing; if workers race, the trials beyond
the first ``n_trials`` live ones (by trial number) are told FAIL and marked ``hwnas:surplus``
before any work is spent on them. Interrupts fail the in-flight batch, so the storage never
keeps a half-scored trial and a re-run resumes.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from ._batch_ask import BatchAsker, is_database, tell_all
from ._objectives import Budget, Objective, _key
from ._ray import submit_score
from ._storage import has_heartbeat

SURPLUS_ATTR = "hwnas:surplus"
DUPLICATE_ATTR = "hwnas:duplicate_retry"
ERROR_ATTR = "hwnas:error"
CACHED_ATTR = "hwnas:cached"
CLAIM_ATTR = "hwnas:claim"  # a RUNNING trial whose arch its worker is evaluating (workers sharing max_evaluations)
_LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def score_batch(objectives: Sequence[Objective], archs: Sequence[Any], use_ray: bool = False) -> np.ndarray:
    """Values of every objective for every arch, shape (len(archs), len(objectives)).

    With ``use_ray``, objectives that need resources (a device, a GPU) run as Ray tasks on a
    node that has them, concurrently with each other and with the local objectives. Local
    objectives run in order, each skipping archs that an earlier one scored NaN (left NaN)."""
    remote = {}
    if use_ray:
        remote = {j: submit_score(o, archs) for j, o in enumerate(objectives) if o.resources}
    cols: list = [None] * len(objectives)
    alive = np.ones(len(archs), bool)
    for j, o in enumerate(objectives):
        if j in remote:
            continue
        if alive.all():
            cols[j] = o(archs)
        else:  # an arch another objective already failed (NaN) is not scored again: it fails anyway
            cols[j] = np.full(len(archs), np.nan)
            idx = np.flatnonzero(alive)
            if idx.size:
                cols[j][idx] = o([archs[i] for i in idx])
        alive &= np.isfinite(np.asarray(cols[j], float))
    if remote:
        import ray

        for j, values in zip(remote, ray.get(list(remote.values()))):
            cols[j] = values
    return np.stack(cols, axis=1) if archs else np.zeros((0, len(objectives)))


def budget_violations(values: np.ndarray, objectives: Sequence[Objective], budgets: Sequence[Budget]) -> np.ndarray:
    """``value - limit`` per budget (<= 0: within budget), shape (n, len(budgets))."""
    index = {o.name: j for j, o in enumerate(objectives)}
    if not budgets:
        return np.zeros((values.shape[0], 0))
    cols = [index[b.objective] for b in budgets]
    return values[:, cols] - np.asarray([b.limit for b in budgets])


def trial_counts(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials of the study are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for t in study._get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


_ASKERS: "weakref.WeakKeyDictionary[optuna.Study, BatchAsker]" = weakref.WeakKeyDictionary()


def batch_asker(study: optuna.Study, space) -> BatchAsker:
    """The one :class:`BatchAsker` of a study kept in a database, shared by the pre-flight trial
    and the loop: a sampler must see a single study (TPE ties its search space to one)."""
    asker = _ASKERS.get(study)
    if asker is None or asker.space is not space or asker.local.sampler is not study.sampler:
        asker = _ASKERS[study] = BatchAsker(study, space)
    return asker


class ScoreCache:
    """The values of every arch the study has scored, by arch key, kept up to date from the
    storage (other workers' trials, an earlier run's), and how many evaluations that took.

    An evaluation is a trial whose objectives were scored (completed, or failed with a
    non-finite value); trials told from the cache are not evaluations."""

    def __init__(self, space, n_objectives: int):
        self.space, self.n = space, n_objectives
        self.rows: dict = {}  # arch key -> values (NaN where an objective failed or was not scored)
        self.errors: dict = {}  # arch key -> the failure message of an arch that failed
        self.evaluations = 0
        self._taken: set[int] = set()  # trial numbers already taken in

    def __contains__(self, key) -> bool:
        return key in self.rows

    def sync(self, study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial] | None = None) -> None:
        """Take in the study's finished trials not yet seen (of ``trials``, one reading of the
        study's trials, where given)."""
        for t in study._get_trials(deepcopy=False) if trials is None else trials:
            if t.number in self._taken or not t.state.is_finished():
                continue
            self._taken.add(t.number)
            failed = t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs
            if t.state != TrialState.COMPLETE and not failed:
                continue  # surplus, interrupted or pruned: nothing was learnt
            if not t.user_attrs.get(CACHED_ATTR):
                self.evaluations += 1
            key = _key(self.space.from_params(t.params))
            if key not in self.rows:
                self.rows[key] = np.asarray(t.values if not failed else [np.nan] * self.n, float)
                if failed:
                    self.errors[key] = t.user_attrs[ERROR_ATTR]

    def add(self, key, row: np.ndarray) -> None:
        """Remember the values of an arch this process has just scored (counted once told, by :meth:`sync`)."""
        self.rows.setdefault(key, np.asarray(row, float))


def claimed(trials: Sequence[optuna.trial.FrozenTrial], space, skip: set[int] = frozenset()) -> set:
    """The arch keys of the RUNNING trials of ``trials`` (numbers not in ``skip``) claimed for
    evaluation by a worker (:data:`CLAIM_ATTR`): evaluations in flight. A dead worker's are no
    longer RUNNING once failed as stale, so its claims lapse. ``trials`` must be the reading
    the :class:`ScoreCache` was synced with: read twice, a claim finished in between would be
    in neither."""
    return {_key(space.from_params(t.params)) for t in trials
            if t.state == TrialState.RUNNING and t.user_attrs.get(CLAIM_ATTR) and t.number not in skip}


def evaluation_count(study: optuna.Study) -> int:
    """How many evaluations the study's trials took (trials told from the cache excluded)."""
    return sum(1 for t in study._get_trials(deepcopy=False)
               if (t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs))
               and not t.user_attrs.get(CACHED_ATTR))


class _Heartbeat:
    """Records a heartbeat for every trial of a batch from its ask until it is told (RDB
    storages). ``batch`` is read at every beat: asking a batch takes a round trip per re-queued
    trial's parameter, and under load that outlasts the grace period, so the trials asked first
    must beat while the rest are asked, or another worker fails them as a dead worker's."""

    def __init__(self, storage, batch: list):
        self.storage, self.batch = storage, batch
        self.dropped: frozenset = frozenset()  # surplus trials, failed before any work: no longer beating
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.wait(interval):
            for t in list(self.batch):
                if t.number not in self.dropped:
                    self.storage.record_heartbeat(t._trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _fail_stale_once(study: optuna.Study) -> None:
    """Fail a dead worker's trials and re-queue each once. Two workers may both fail the same
    stale trial (SQLite cannot lock the row) and each re-queue a copy: extra WAITING copies of
    one original are failed and marked ``hwnas:duplicate_retry``, keeping a copy that already
    runs or finished, else the lowest-numbered one."""
    fail_stale_trials(study)
    copies: dict[int, list] = {}
    for t in study._get_trials(deepcopy=False, states=_LIVE):
        origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if origin is not None:
            copies.setdefault(origin, []).append(t)
    for same in copies.values():
        same.sort(key=lambda t: (t.state == TrialState.WAITING, t.number))
        for t in same[1:]:
            if t.state == TrialState.WAITING:
                try:  # the state read above may be stale: another worker can take or fail it any instant
                    study._storage.set_trial_user_attr(t._trial_id, DUPLICATE_ATTR, True)
                    study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker finished it meanwhile


def _drop_surplus(study: optuna.Study, batch: list, n_trials: int) -> list:
    """Fail (before any work) the trials of ``batch`` beyond the first ``n_trials`` live ones."""
    live = sorted(t.number for t in study._get_trials(deepcopy=False, states=_LIVE))
    if len(live) <= n_trials:
        return batch
    cutoff = live[n_trials - 1]
    kept = []
    for t in batch:
        if t.number > cutoff:
            t.set_user_attr(SURPLUS_ATTR, True)
            study.tell(t, state=TrialState.FAIL)
        else:
            kept.append(t)
    return kept


def _tell_batch(study, batch, values, violations, objectives, budgets, cached=None, errors=None) -> int:
    """Tell every trial of ``batch`` its values (FAIL where one is not finite). ``cached[i]``
    marks a trial answered from the cache; ``errors`` (arch key -> message) overrides the
    message of a cached failure."""
    outcomes = []  # (trial, values or None when failed, constraints, user attributes)
    cached = [False] * len(batch) if cached is None else cached
    for t, v, c, (from_cache, message) in zip(batch, values, violations, zip(cached, errors or [None] * len(batch))):
        bad = [o.name for o, x in zip(objectives, v) if not math.isfinite(x)]
        attrs = {ERROR_ATTR: message or f"objective(s) {bad} returned a non-finite value"} if bad else {}
        if from_cache:
            attrs[CACHED_ATTR] = True
        outcomes.append((t, None if bad else v.tolist(), {b.objective: x for b, x in zip(budgets, c.tolist())}, attrs))
    if is_database(study._storage):
        return tell_all(study, outcomes)  # one transaction for the batch
    completed = 0
    for t, v, constraints, attrs in outcomes:
        if study._storage.get_trial(t._trial_id).state.is_finished():
            # Another worker took the same re-queued trial (SQLite cannot lock the row Optuna pops
            # WAITING trials from) and told it first: it counts once, there.
            continue
        for key, x in constraints.items():
            t.set_constraint(key, x)  # Optuna 5: samplers read trial.constraints
        for key, x in attrs.items():
            t.set_user_attr(key, x)
        if v is None:
            study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(t, v, skip_if_finished=True)  # the same race, in the instant since the check
            completed += 1
    return completed


def fresh_keys(cache: ScoreCache, archs: Sequence[Any], allowance: int | None = None, busy: set = frozenset()) -> dict:
    """The archs of ``archs`` to score, by key: those the cache lacks, each once, at most
    ``allowance`` (None: all), none whose key is ``busy`` (in another worker's hands)."""
    fresh: dict = {}
    for a in archs:
        k = _key(a)
        if k not in cache and k not in fresh and k not in busy and (allowance is None or len(fresh) < allowance):
            fresh[k] = a
    return fresh


def score_cached(cache: ScoreCache, objectives: Sequence[Objective], archs: Sequence[Any], use_ray: bool = False,
                 allowance: int | None = None, fresh: dict | None = None) -> tuple[np.ndarray, list[bool], list, list[bool]]:
    """Values of ``archs``, scoring only those the cache lacks (each once), at most ``allowance``
    of them (None: all), or exactly ``fresh`` (key -> arch, from :func:`fresh_keys`) where given.
    Returns (values, answered from the cache, cached failure messages, within the allowance) per
    arch; an arch beyond the allowance gets NaN values."""
    keys = [_key(a) for a in archs]
    if fresh is None:
        fresh = fresh_keys(cache, archs, allowance)
    if fresh:
        for k, row in zip(fresh, score_batch(objectives, list(fresh.values()), use_ray)):
            cache.add(k, row)
    nan = np.full(len(objectives), np.nan)
    values = np.stack([cache.rows.get(k, nan) for k in keys]) if archs else np.zeros((0, len(objectives)))
    first: set = set()
    from_cache = []
    for k in keys:
        from_cache.append(k not in fresh or k in first)  # a repeat within the batch: scored once, for the first
        first.add(k)
    return values, from_cache, [cache.errors.get(k) for k in keys], [k in cache.rows for k in keys]


def optimize_batches(study: optuna.Study, space, objectives: Sequence[Objective], budgets: Sequence[Budget],
                     n_trials: int, batch_size: int, *, n_workers: int = 1, use_ray: bool = False,
                     on_batch: Callable[[int], None] | None = None, max_evaluations: int | None = None,
                     claim_lock: Callable[[], Any] | None = None) -> int:
    """Run the ask-score-tell loop until the study holds ``n_trials`` completed trials (or the
    rest is in other workers' hands), or has taken ``max_evaluations`` evaluations. Each
    distinct arch is scored once (see :class:`ScoreCache`). Returns the trials this call
    completed; ``on_batch`` gets that number after every batch.

    Workers sharing ``max_evaluations`` pass ``claim_lock`` (a context manager factory,
    :func:`search._lock.evaluation_lock`): under it a worker counts the finished evaluations and
    the other workers' claimed ones (:func:`claimed`), and claims its own (:data:`CLAIM_ATTR`)
    within what is left, skipping archs another worker is evaluating; so the workers together
    take at most ``max_evaluations`` evaluations, each arch once."""
    with warnings.catch_warnings():
        # This loop records heartbeats itself (Optuna warns that only Study.optimize does) and
        # uses fail_stale_trials, "experimental" in Optuna since 2.9.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _optimize_batches(study, space, objectives, budgets, n_trials, batch_size, n_workers, use_ray, on_batch,
                                 max_evaluations, claim_lock)


def _optimize_batches(study, space, objectives, budgets, n_trials, batch_size, n_workers, use_ray, on_batch,
                      max_evaluations=None, claim_lock=None) -> int:
    heartbeat = has_heartbeat(study._storage)
    asker = batch_asker(study, space) if is_database(study._storage) else None
    cache = ScoreCache(space, len(objectives))
    done = 0
    while True:
        if heartbeat:
            _fail_stale_once(study)  # a dead worker's trials: failed, then re-queued as WAITING
        trials = study._get_trials(deepcopy=False)
        cache.sync(study, trials)
        allowance = None if max_evaluations is None else max_evaluations - cache.evaluations
        if allowance is not None and claim_lock is not None:
            allowance -= len(claimed(trials, space))  # in flight: the rest is in other workers' hands
        if allowance is not None and allowance <= 0:
            return done
        counts = trial_counts(study)
        missing = n_trials - counts[TrialState.COMPLETE] - counts[TrialState.RUNNING]
        if missing <= 0:
            if not heartbeat or counts[TrialState.COMPLETE] >= n_trials:
                return done
            # Others hold the rest; with a heartbeat, wait: a dead worker's trials come back as WAITING.
            time.sleep(min(1.0, study._storage.get_heartbeat_interval()))
            continue
        # Near the end, share what is missing among the workers so that they do not race for it.
        k = min(batch_size, math.ceil(missing / n_workers))
        batch, drawn = [], {}
        beat = _Heartbeat(study._storage, batch) if heartbeat else nullcontext()
        try:
            # Beating from the first ask until told: neither a slow ask nor a slow tell (SQLite under
            # load) may look like a dead worker.
            with beat:
                if asker is not None:
                    asker.ask(k, batch, drawn, heartbeat)
                # A heartbeat at once: a trial asked just before its worker dies must go stale.
                for _ in range(k - len(batch)):
                    batch.append(study.ask())
                    if heartbeat:
                        study._storage.record_heartbeat(batch[-1]._trial_id)
                kept = _drop_surplus(study, batch, n_trials)
                if heartbeat:
                    beat.dropped = frozenset(t.number for t in batch) - {t.number for t in kept}
                if kept:
                    archs = [drawn[t.number] if t.number in drawn else space.suggest(t) for t in kept]
                    fresh = None
                    if claim_lock is not None and max_evaluations is not None:
                        with claim_lock():  # count, then claim, one worker at a time
                            trials = study._get_trials(deepcopy=False)  # one reading for both
                            cache.sync(study, trials)
                            busy = claimed(trials, space, skip={t.number for t in kept})
                            allowance = max_evaluations - cache.evaluations - len(busy)
                            fresh = fresh_keys(cache, archs, max(allowance, 0), busy)
                            first: set = set()
                            for t, a in zip(kept, archs):
                                k = _key(a)
                                if k in fresh and k not in first:
                                    first.add(k)
                                    t.set_user_attr(CLAIM_ATTR, True)
                    values, cached, errors, within = score_cached(cache, objectives, archs, use_ray, allowance, fresh)
                    if not all(within):  # beyond the evaluation budget: failed unscored, as surplus
                        over = [t for t, ok in zip(kept, within) if not ok]
                        if heartbeat:
                            beat.dropped |= {t.number for t in over}
                        for t in over:
                            t.set_user_attr(SURPLUS_ATTR, True)
                            study.tell(t, state=TrialState.FAIL)
                        keep = [i for i, ok in enumerate(within) if ok]
                        kept, values = [kept[i] for i in keep], values[keep]
                        cached, errors = [cached[i] for i in keep], [errors[i] for i in keep]
                    done += _tell_batch(study, kept, values, budget_violations(values, objectives, budgets),
                                         objectives, budgets, cached, errors)
        except BaseException:
            # Ctrl-C or a failing objective: no half-scored trial stays RUNNING.
            for t in batch:
                study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
            raise
        if not kept:
            continue
        if on_batch is not None:
            on_batch(done)
