"""Search workers as Ray tasks sharing one study storage (:func:`run_workers`); each runs the
worker loop of :mod:`search._loop`, which in turn sends device objectives to Ray through
:mod:`search._ray` (hence three modules: no import cycle)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._errors import SearchError
from ._loop import optimize_batches
from ._objectives import Budget, Objective
from ._ray import _ray

# Every worker is a task with one CPU; Ray re-runs a worker whose process died (its
# unfinished trials are failed by the storage heartbeat and retried by the others).
WORKER_RETRIES = 2


@dataclass
class WorkerSpec:
    """Everything a worker process needs to join the study (all picklable)."""

    storage_url: str
    study_name: str
    sampler: Any  # a name, or an Optuna sampler instance (each worker unpickles its own copy)
    seed: int | None
    population_size: int | None
    space: Any
    objectives: list[Objective]
    budgets: list[Budget]
    n_trials: int
    batch_size: int | None
    n_workers: int
    storage_options: dict = field(default_factory=dict)
    max_evaluations: int | None = None  # shared by the workers: claimed under the study's evaluation lock


def _worker(spec: WorkerSpec, index: int) -> int:
    import optuna

    from ._lock import evaluation_lock
    from ._samplers import default_batch_size, make_sampler
    from ._storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = None if spec.seed is None else spec.seed + index  # workers must not propose the same trials
    sampler = make_sampler(spec.sampler, seed=seed, population_size=spec.population_size)
    if not isinstance(spec.sampler, str):
        sampler.reseed_rng()  # copies of one instance would otherwise all propose the same trials
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec.storage_url, **spec.storage_options),
                              sampler=sampler)
    claim_lock = None
    if spec.max_evaluations is not None:
        def claim_lock():
            return evaluation_lock(spec.storage_url, spec.study_name)
    return optimize_batches(study, spec.space, spec.objectives, spec.budgets, spec.n_trials,
                            spec.batch_size or default_batch_size(sampler), n_workers=spec.n_workers, use_ray=True,
                            max_evaluations=spec.max_evaluations, claim_lock=claim_lock)


def run_workers(spec: WorkerSpec, on_poll: Callable[[], Any] | None = None, poll_s: float = 0.5,
                stall_s: float | None = None) -> list[int]:
    """Run ``spec.n_workers`` workers as Ray tasks until the study is done; returns each
    worker's completed trials. Ctrl-C cancels them (each fails its in-flight batch).

    ``on_poll`` returns the study's progress (e.g. its completed trials); when that has not
    changed for ``stall_s`` seconds, the workers are cancelled and :class:`SearchError` says so:
    a search that cannot finish (its last trials held by a worker that never returns) ends in one
    line instead of waiting for ever."""
    ray = _ray()
    task = ray.remote(_worker)
    # Named for the Ray dashboard (and `hwnas status`): which study, which worker.
    refs = [task.options(num_cpus=1, max_retries=WORKER_RETRIES, name=f"hwnas search {spec.study_name} worker {i}")
            .remote(spec, i) for i in range(spec.n_workers)]
    progress, since = None, time.monotonic()
    try:
        pending = refs
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
            now = on_poll() if on_poll is not None else None
            if now != progress:
                progress, since = now, time.monotonic()
            elif pending and stall_s is not None and time.monotonic() - since > stall_s:
                _cancel(ray, refs)
                raise SearchError(f"search stalled: study {spec.study_name!r} made no progress for {stall_s:g} s "
                                  f"({progress}); its workers were stopped: re-run to resume (trials left RUNNING "
                                  f"are failed and redone), or allow more time (--stall-timeout)")
        return ray.get(refs)
    except KeyboardInterrupt:
        _cancel(ray, refs)
        raise
    except ray.exceptions.RayTaskError as e:
        # A user error inside a worker is still a user error (one line, exit code 2).
        from search_space.errors import UserError

        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise
    except ray.exceptions.RayError as e:  # a worker's process or node died more often than Ray retries
        _cancel(ray, refs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SearchError(f"search workers of study {spec.study_name!r} were lost ({type(e).__name__}: {first[:200]}) "
                          f"after {WORKER_RETRIES} retries each: re-run to resume (finished trials are kept)") from None


def _cancel(ray, refs, grace_s: float = 30) -> None:
    """Cancel the workers: each fails its in-flight batch (KeyboardInterrupt inside the task); one that
    has not stopped after ``grace_s`` is killed, so that it cannot hold its CPU for ever (seen on a loaded
    VM: two cancelled workers kept both CPUs and the next search waited for ever)."""
    for r in refs:
        ray.cancel(r)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
    for r in left:
        ray.cancel(r, force=True)
