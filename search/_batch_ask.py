"""Asking a batch of trials of a study kept in a database (PostgreSQL, SQLite) without a round
trip per parameter and per sampler call.

Optuna's cached RDB storage re-reads every unfinished trial (all its parameters and attributes)
on each sampler call, and commits each parameter on its own: with a batch of 100 trials asked
before any is told, that is quadratic in the batch, and 1,000 cifar-space trials on PostgreSQL
took minutes where a journal file takes seconds. Here the sampler works on an in-memory copy
of the study's completed trials (brought up to date once per batch), and each new trial goes
to the database in one transaction with its parameters and the sampler's attributes (the GA
generation), so the other workers see exactly what they would have seen.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState


def is_database(storage) -> bool:
    """Whether ``storage`` is an RDB storage (plain or behind Optuna's cache)."""
    return isinstance(storage, (RDBStorage, _CachedStorage))


class BatchAsker:
    """Asks trials of ``study`` (an RDB storage) a batch at a time; see the module doc."""

    def __init__(self, study: optuna.Study, space):
        self.study, self.space = study, space
        # The same sampler object: its seeded state advances as it would on the study itself.
        self.local = optuna.create_study(directions=study.directions, sampler=study.sampler)
        self.copied: set[int] = set()  # numbers of the study's completed trials already in the copy

    def _sync(self) -> int:
        """Copy the completed trials the copy lacks; returns how many trials wait to be re-run."""
        waiting = 0
        for t in self.study._get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE and t.number not in self.copied:
                self.local.add_trial(t)
                self.copied.add(t.number)
            waiting += t.state == TrialState.WAITING
        return waiting

    def ask(self, k: int, batch: list, archs: dict[int, Any], heartbeat: bool) -> None:
        """Append ``k`` new RUNNING trials of the study to ``batch`` (re-queued WAITING ones
        first) and their archs to ``archs`` by trial number; each beats at once when
        ``heartbeat``. Filling the caller's list lets it fail what was asked if interrupted."""
        storage = self.study._storage
        for _ in range(min(k, self._sync())):
            trial = self.study.ask()  # pops a re-queued trial (its parameters are fixed)
            batch.append(trial)
            if heartbeat:
                storage.record_heartbeat(trial._trial_id)
            try:
                archs[trial.number] = self.space.suggest(trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another worker failed it meanwhile (taken for a dead worker's): its copy is re-queued.
                batch.pop()
        proposals = []
        for _ in range(k - len(batch)):
            proposal = self.local.ask()  # the batch's earlier proposals are RUNNING, as they would be
            arch = self.space.suggest(proposal)
            proposals.append((self.local._storage.get_trial(proposal._trial_id), arch))
        for drawn, _ in proposals:
            self.local.tell(drawn.number, state=TrialState.FAIL)  # only its copy in the study counts
        for frozen, (_, arch) in zip(insert_running(storage, self.study._study_id, [p for p, _ in proposals],
                                                    heartbeat), proposals):
            trial = _handle(self.study, frozen)
            batch.append(trial)
            archs[trial.number] = arch


def _handle(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """``optuna.Trial(study, id)`` for a trial just written from ``frozen``, without reading it
    back (six queries); its parameters are all set, so no sampler runs for it."""
    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study, trial._trial_id, trial.storage = study, frozen._trial_id, study._storage
    trial._cached_frozen_trial = frozen
    trial.relative_search_space, trial._relative_params, trial._fixed_params = None, None, {}
    return trial


def insert_running(storage, study_id: int, drawn: list[FrozenTrial], heartbeat: bool) -> list[FrozenTrial]:
    """Add RUNNING trials with the parameters and system attributes of ``drawn`` to the study,
    all in one transaction (with a first heartbeat each); returns them as written.

    Optuna's ``create_new_trial`` takes three queries per parameter under the study's row lock,
    so that workers wait on each other. The parameters come from one search space, so the
    distribution check it repeats per parameter is not needed here."""
    if not drawn:
        return []
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    rdb = storage._backend if isinstance(storage, _CachedStorage) else storage
    now = datetime.now()
    with _create_scoped_session(rdb.scoped_session, True) as session:
        # Trial numbers count the study's earlier trials: one writer at a time, as in Optuna (the
        # study's row lock on PostgreSQL; SQLite's write lock, held from the first insert on).
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        rows = []
        for t in drawn:
            row = models.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=now)
            row.params = [models.TrialParamModel(param_name=name, param_value=t.distributions[name].to_internal_repr(v),
                                                 distribution_json=distribution_to_json(t.distributions[name]))
                          for name, v in t.params.items()]
            row.system_attributes = [models.TrialSystemAttributeModel(key=key, value_json=json.dumps(v))
                                     for key, v in t.system_attrs.items()]
            if heartbeat:  # a trial that never beat would never be found stale
                row.heartbeats = [models.TrialHeartbeatModel()]
            session.add(row)
            rows.append(row)
        session.flush()
        first = (session.query(models.TrialModel).filter(models.TrialModel.study_id == study_id,
                                                         models.TrialModel.trial_id < rows[0].trial_id).count())
        for i, row in enumerate(rows):
            row.number = first + i
        session.flush()
        return [FrozenTrial(number=row.number, state=TrialState.RUNNING, value=None, values=None, datetime_start=now,
                            datetime_complete=None, params=dict(t.params), distributions=dict(t.distributions),
                            user_attrs={}, system_attrs=dict(t.system_attrs), intermediate_values={},
                            trial_id=row.trial_id) for row, t in zip(rows, drawn)]


def tell_all(study: optuna.Study, outcomes: list) -> int:
    """Tell a scored batch in one transaction; returns the trials completed. ``outcomes``:
    (trial, values or None to fail it, constraints, user attributes) per trial. A trial that
    another worker already told is skipped (it counts once, there), as ``study.tell`` would."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = study._storage
    rdb = storage._backend if isinstance(storage, _CachedStorage) else storage
    now, told = datetime.now(), []
    with _create_scoped_session(rdb.scoped_session, True) as session:
        for t, values, constraints, attrs in sorted(outcomes, key=lambda o: o[0]._trial_id):  # one lock order
            row = models.TrialModel.find_or_raise_by_id(t._trial_id, session, for_update=True)
            if row.state.is_finished():
                continue
            # Optuna 5 keeps each constraint as system attribute "constraints:NAME" (Trial.set_constraint).
            # Rows added by trial id, not through the relationships: those would load each one first.
            session.add_all(models.TrialSystemAttributeModel(trial_id=row.trial_id, key=f"constraints:{k}",
                                                             value_json=json.dumps(x)) for k, x in constraints.items())
            session.add_all(models.TrialUserAttributeModel(trial_id=row.trial_id, key=k, value_json=json.dumps(x))
                            for k, x in attrs.items())
            for objective, v in enumerate(values or []):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                session.add(models.TrialValueModel(trial_id=row.trial_id, objective=objective, value=stored,
                                                   value_type=kind))
            row.state = TrialState.FAIL if values is None else TrialState.COMPLETE
            row.datetime_complete = now
            told.append((t, row.state, values))
    for t, state, values in told:
        study.sampler.after_trial(study, t._cached_frozen_trial, state, values)
    return sum(state == TrialState.COMPLETE for _, state, _ in told)
