"""``run_search``: set up (or resume) the study and run the workers until it holds exactly
``n_trials`` completed trials."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager, nullcontext
from typing import Sequence

import numpy as np
import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from tqdm.auto import tqdm

from ._errors import SearchError
from ._batch_ask import is_database
from ._lock import study_lock
from ._loop import (SURPLUS_ATTR, _tell_batch, batch_asker, budget_violations, evaluation_count, optimize_batches,
                    score_batch, trial_counts)
from ._objectives import Budget, Objective, check_budgets, check_objectives
from ._samplers import DEFAULT_POPULATION, check_sampler, default_batch_size, make_sampler
from ._storage import (HEARTBEAT_INTERVAL_S, flush_storage, is_shared, open_storage, redact_url, storage_url,
                       with_password)

log = logging.getLogger(__name__)
META_ATTR = "hwnas:meta"
POPULATION_ATTR = "hwnas:population"
MAX_TOP_UP_ROUNDS = 3
# A Ray search whose trial counts do not move for this long has lost its last trials (a worker
# that never returns and never stops beating): stop it rather than wait for ever. Long enough for
# one batch of slow real measurements.
STALL_TIMEOUT_S = 1800
TRIALS_PER_EVALUATION = 20  # the trial cap of a run bounded by evaluations only (a converged GA re-proposes)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError(f"{what} {value!r} is invalid: expected a positive integer")
    return value


def study_meta(space, objectives: Sequence[Objective], budgets: Sequence[Budget]) -> dict:
    """What a study must keep to be resumed: objectives, budgets and the space's fingerprint."""
    return {"objectives": [[o.name, o.direction] for o in objectives],
            "budgets": {b.objective: b.limit for b in budgets},
            "space": getattr(space, "fingerprint", None)}


def _check_resume(study: optuna.Study, meta: dict, name: str, url: str) -> None:
    stored = study.user_attrs.get(META_ATTR)
    if stored is None:
        if study.trials:
            raise SearchError(f"study {name!r} in storage {url!r} holds trials not made by hwnas search: expected a new study name")
        study.set_user_attr(META_ATTR, meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in meta["objectives"]])
        return
    for key, what in (("space", "search space"), ("objectives", "objectives"), ("budgets", "budgets")):
        if stored.get(key) != meta[key]:
            raise SearchError(f"study {name!r} in storage {url!r} was run with {what} {stored.get(key)!r}, not "
                              f"{meta[key]!r}: resume with the same settings or pass a new --study name")


def _objective_error(o: Objective, arch, e: Exception) -> SearchError:
    first = str(e).splitlines()[0] if str(e) else ""
    return SearchError(f"objective {o.name!r} fails on {arch}: {type(e).__name__}: {first}")


def _preflight(study: optuna.Study, space, objectives: Sequence[Objective], budgets: Sequence[Budget],
               use_ray: bool) -> None:
    """Check the objectives on the study's first arch, so that a predictor for another encoding
    or a broken table fails now, in one line, not inside a worker; nothing is spent twice.

    The cheap objectives (``cache=True``: tables, predictors) are scored first. In a new study
    the probe is its first trial, which the other objectives then score and which is told like
    any trial (the check costs no extra evaluation). A resumed study's probe is its first
    completed arch, and only the cheap objectives are run (no extra measurement on resume)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial, drawn = None, {}
        if not done:  # a queued seed arch first, else the sampler's first proposal
            if is_database(study._storage):
                batch: list = []
                batch_asker(study, space).ask(1, batch, drawn, heartbeat=False)
                trial = batch[0]
            else:
                trial = study.ask()
    try:
        arch = space.from_params(done[0].params) if done else drawn[trial.number] if trial.number in drawn else space.suggest(trial)
        for o in objectives:
            if o.cache and not o.resources:
                try:
                    o([arch])
                except SearchError:
                    raise
                except Exception as e:
                    raise _objective_error(o, arch, e) from None
        if trial is None:
            return
        values = np.full((1, len(objectives)), np.nan)
        remote = [j for j, o in enumerate(objectives) if o.resources and use_ray]
        if remote:  # on the nodes that have the resources
            values[0, remote] = score_batch([objectives[j] for j in remote], [arch], use_ray)[0]
        for j, o in enumerate(objectives):
            if j in remote:
                continue
            try:
                values[0, j] = o([arch])[0]
            except SearchError:
                raise
            except Exception as e:
                raise _objective_error(o, arch, e) from None
            if not np.isfinite(values[0, j]):
                break  # as in every batch: an arch that failed one objective is not scored by the next
        _tell_batch(study, [trial], values, budget_violations(values, objectives, budgets), objectives, budgets)
    except BaseException:
        if trial is not None:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _fail_leftovers(study: optuna.Study) -> int:
    """Fail RUNNING trials: at start-up (a killed earlier run) or after all workers ended (a dead worker)."""
    stuck = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stuck:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(stuck)


def _fail_surplus_copies(study: optuna.Study) -> int:
    """After the study reached its total: fail the re-queued copies of dead workers' trials still
    WAITING, marked ``hwnas:surplus``. Workers that saw a stale trial failed before its copy was
    queued filled the gap with new trials, so the total was reached without the copies; left
    WAITING, they would look like unfinished work to every reader of the study."""
    copies = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
              if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None]
    for t in copies:
        study._storage.set_trial_user_attr(t._trial_id, SURPLUS_ATTR, True)
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a straggler finished it meanwhile
    return len(copies)


def run_search(space, objectives: Sequence[Objective], n_trials: int | None = None, *,
               max_evaluations: int | None = None, budgets: Sequence[Budget] = (),
               sampler: str | BaseSampler = "nsga2", seed: int | None = None, population_size: int | None = None,
               storage: str | BaseStorage | None = None, study_name: str | None = None, workers: int = 1,
               ray_address: str | None = None, batch_size: int | None = None, progress: bool = True,
               heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S, grace_period: int | None = None,
               seed_archs: Sequence = (), stall_timeout: float | None = STALL_TIMEOUT_S) -> optuna.Study:
    """Search ``space`` until the study holds exactly ``n_trials`` completed trials, or has
    taken ``max_evaluations`` evaluations (distinct archs scored), whichever comes first; returns the study.

    Each distinct arch is scored once per study: a re-proposed arch is told its stored values
    (trial attribute ``hwnas:cached``), so a budget of true measurements is ``max_evaluations``
    (with ``n_trials`` None, trials are capped at 20 x ``max_evaluations``). Ray workers share the
    budget: each claims its evaluations under the study's evaluation lock
    (:func:`search._lock.evaluation_lock`), so together they take at most ``max_evaluations``,
    each arch once.

    ``sampler``: a name (see :func:`make_sampler`; ``seed`` and ``population_size`` configure
    it) or any Optuna sampler instance, used as it is (Ray workers each get a reseeded copy).
    Objectives are scored a batch at a time (``batch_size``, default: one GA generation).
    ``storage``: None (in-memory), a journal file, an SQLite file or an RDB URL; the same
    storage and ``study_name`` resume (``n_trials`` is the study's total, not an increment).
    ``workers`` > 1 or a ``ray_address`` runs the workers as Ray tasks sharing the storage;
    objectives with ``resources`` then run on the nodes that have them. One ``run_search``
    per study at a time (a second one is refused: :func:`search._lock.study_lock`), so RUNNING
    trials it finds at start belong to an interrupted run and are failed. Ctrl-C fails the in-flight batches; the storage stays resumable.
    A named GA sampler's population is sized to ``n_trials`` (:func:`budget_population`) unless
    ``population_size`` is given; a resumed study keeps the population it started with.
    The objectives are checked on the first arch before the run (a failure is one line); the
    check is the study's first trial, and a resumed study checks only the cheap (``cache``) objectives.
    ``seed_archs`` (e.g. ``space.extremes()``) open a new study's first population, so corners a
    random start rarely draws, such as the largest subnet, are scored; the space needs ``to_params``.
    With Ray workers, a study whose completed and running trials do not change for ``stall_timeout``
    seconds (None: no limit) stops the workers with a :class:`SearchError`; re-running resumes it.
    """
    objectives = check_objectives(objectives)
    budgets = check_budgets(budgets, objectives)
    workers = _positive_int(workers, "number of workers")
    if max_evaluations is not None:
        max_evaluations = _positive_int(max_evaluations, "number of evaluations")
    elif n_trials is None:
        raise SearchError("no budget: expected a number of trials, a number of evaluations (max_evaluations), or both")
    n_trials = _positive_int(n_trials, "number of trials") if n_trials is not None else \
        TRIALS_PER_EVALUATION * max_evaluations
    if batch_size is not None:
        _positive_int(batch_size, "batch size")
    if stall_timeout is not None and (isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float))
                                      or not stall_timeout > 0):
        raise SearchError(f"stall timeout {stall_timeout!r} is invalid: expected a positive number of seconds or None")
    check_sampler(sampler, population_size)
    with quiet_optuna():
        return _run_search(space, objectives, n_trials, budgets, sampler, seed, population_size, storage, study_name,
                           workers, ray_address, batch_size, progress, heartbeat_interval, grace_period, seed_archs,
                           stall_timeout, max_evaluations)


def _enqueue_seeds(study: optuna.Study, space, archs: Sequence) -> None:
    """Queue ``archs`` as the first trials of a study that has none (a resumed study keeps its own)."""
    if not archs or study.get_trials(deepcopy=False):
        return
    if not hasattr(space, "to_params"):
        raise SearchError(f"seed_archs need a space with to_params(arch); {type(space).__name__} has none")
    for arch in archs:
        study.enqueue_trial(space.to_params(arch), skip_if_exists=True)


@contextmanager
def quiet_optuna():
    """Optuna logs every told trial at INFO: silence it for the run, then restore the user's level."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _run_search(space, objectives, n_trials, budgets, sampler, seed, population_size, storage, study_name, workers,
                ray_address, batch_size, progress, heartbeat_interval, grace_period, seed_archs=(),
                stall_timeout=STALL_TIMEOUT_S, max_evaluations=None) -> optuna.Study:
    use_ray = workers > 1 or bool(ray_address)
    url = storage_url(storage) if not isinstance(storage, BaseStorage) else type(storage).__name__
    shown = redact_url(url)  # the URL as messages show it: no password
    storage_options = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    store = open_storage(storage, single_process=not use_ray, **storage_options)
    if use_ray and (isinstance(storage, BaseStorage) or not is_shared(store)):
        raise SearchError(f"Ray workers need a storage they can open themselves, got {shown!r}: "
                          "pass a journal file, an SQLite file or an RDB URL")

    study_name = study_name or f"hwnas-{getattr(space, 'name', 'search')}"
    # One driver per study: at start a driver fails the RUNNING trials it finds (an interrupted
    # run's), which would be a live driver's had it not been refused here.
    lock = study_lock(url, study_name, shown) if not isinstance(storage, BaseStorage) else nullcontext()
    with lock:
        study = optuna.create_study(storage=store, study_name=study_name, load_if_exists=True,
                                    directions=[o.direction for o in objectives])
        _check_resume(study, study_meta(space, objectives, budgets), study_name, shown)
        if isinstance(sampler, str):
            # a resumed GA keeps the population it started with (n_trials, the total, may have grown)
            population_size = population_size or study.user_attrs.get(POPULATION_ATTR)
            if population_size is None and study.trials:  # started before the population was recorded
                population_size = DEFAULT_POPULATION
        the_sampler = make_sampler(sampler, seed=seed, population_size=population_size,
                                   n_trials=min(n_trials, max_evaluations or n_trials))
        if isinstance(sampler, str) and isinstance(the_sampler, optuna.samplers.BaseGASampler):
            population_size = the_sampler.population_size  # the Ray workers' samplers get the same
            study.set_user_attr(POPULATION_ATTR, population_size)
        study.sampler = the_sampler
        _enqueue_seeds(study, space, seed_archs)
        stuck = _fail_leftovers(study)
        if stuck:
            log.warning("study %r: %d trials left RUNNING by an interrupted run were marked failed", study_name, stuck)

        if use_ray:
            from ._ray import check_resources, init_ray
            from ._shared_fs import check_storage_shared

            init_ray(ray_address)
            check_resources(objectives)
            check_storage_shared(url, shown)  # a file storage: every node running workers must see it
        _preflight(study, space, objectives, budgets, use_ray)

        def progress_now() -> int:
            """Completed trials, or evaluations when those are the budget."""
            if max_evaluations is not None:
                return min(max_evaluations, evaluation_count(study))
            return min(n_trials, trial_counts(study)[TrialState.COMPLETE])

        def finished() -> bool:
            return trial_counts(study)[TrialState.COMPLETE] >= n_trials or (
                max_evaluations is not None and evaluation_count(study) >= max_evaluations)

        bar = tqdm(total=max_evaluations or n_trials, initial=progress_now(), desc=f"search {study_name}",
                   unit="trial" if max_evaluations is None else "evaluation", disable=not progress, dynamic_ncols=True)

        def refresh(*_) -> str:
            """Progress from the storage: counts every worker's completed trials."""
            counts = trial_counts(study)
            bar.n = progress_now()
            bar.refresh()
            return (f"{counts[TrialState.COMPLETE]} of {n_trials} trials completed, {counts[TrialState.RUNNING]} running, "
                    f"{counts[TrialState.WAITING]} waiting")

        try:
            for _ in range(MAX_TOP_UP_ROUNDS):
                before = trial_counts(study)[TrialState.COMPLETE]
                if finished():
                    break
                if use_ray:
                    from ._workers import WorkerSpec, run_workers

                    # Workers on other nodes may lack the driver's environment: they get the password in the URL.
                    spec = WorkerSpec(with_password(url), study_name, sampler, seed, population_size, space, objectives,
                                      budgets, n_trials, batch_size, workers, storage_options, max_evaluations)
                    run_workers(spec, on_poll=refresh, stall_s=stall_timeout)
                else:
                    optimize_batches(study, space, objectives, budgets, n_trials,
                                     batch_size or default_batch_size(the_sampler), on_batch=refresh,
                                     max_evaluations=max_evaluations)
                refresh()
                # All workers have returned: RUNNING trials are a dead worker's (no heartbeat to fail them).
                _fail_leftovers(study)
                if trial_counts(study)[TrialState.COMPLETE] == before:
                    break
        finally:
            bar.close()
            flush_storage(store)
        done = trial_counts(study)[TrialState.COMPLETE]
        if done >= n_trials:
            _fail_surplus_copies(study)
        if not finished():
            raise SearchError(f"study {study_name!r} has {done} completed trials after {MAX_TOP_UP_ROUNDS} rounds, "
                              f"expected {n_trials}: see the failed trials' 'hwnas:error' attribute")
        return study
