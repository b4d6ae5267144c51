"""Completed trials as arrays, and the Pareto front of each device (accuracy against that
device's latency, feasible trials only), with hypervolume and its history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ._errors import SearchError
from ._pareto import hypervolume_2d, hypervolume_history, pareto_front_2d

LATENCY_PREFIX = "latency:"


@dataclass
class Trials:
    """The completed trials of a study: objective values (n, m), feasibility and parameters."""

    numbers: np.ndarray
    params: list[dict]
    values: np.ndarray
    names: list[str]
    directions: list[str]
    feasible: np.ndarray
    budgets: dict[str, float]
    archs: list | None = None  # the archs themselves, where they are not Optuna trials (search rounds)

    @classmethod
    def from_study(cls, study: optuna.Study) -> "Trials":
        """Read the completed trials (in trial order) of a study made by :func:`run_search`."""
        from ._run import META_ATTR

        meta = study.user_attrs.get(META_ATTR)
        if meta is None:
            raise SearchError(f"study {study.study_name!r} was not made by hwnas search (no {META_ATTR!r} attribute)")
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        names = [n for n, _ in meta["objectives"]]
        values = np.asarray([t.values for t in done], float).reshape(len(done), len(names))
        feasible = np.asarray([all(v <= 0 for v in t.constraints.values()) for t in done], bool)
        return cls(np.asarray([t.number for t in done], np.int64), [t.params for t in done], values, names,
                   [d for _, d in meta["objectives"]], feasible, dict(meta["budgets"]))

    def __len__(self) -> int:
        return len(self.numbers)

    def column(self, name: str) -> np.ndarray:
        """Values of objective ``name``."""
        if name not in self.names:
            raise SearchError(f"no objective {name!r} in this study: expected one of {self.names}")
        return self.values[:, self.names.index(name)]

    @property
    def quality(self) -> str:
        """The objective every front maximises: the first maximised one (accuracy)."""
        for n, d in zip(self.names, self.directions):
            if d == "maximize":
                return n
        raise SearchError(f"no maximised objective among {self.names}: a front needs one (e.g. accuracy)")

    def costs(self) -> list[str]:
        """Objectives that get a front: the latencies, else every minimised objective."""
        lat = [n for n in self.names if n.startswith(LATENCY_PREFIX)]
        return lat or [n for n, d in zip(self.names, self.directions) if d == "minimize"]


@dataclass
class FrontPoint:
    """One architecture on a front; ``measured`` holds verified values by objective name."""

    trial: int
    arch: Any
    predicted: dict[str, float]
    measured: dict[str, float] = field(default_factory=dict)
    flops: int | None = None
    params: int | None = None

    def value(self, name: str) -> float:
        """The measured value of ``name`` where there is one, else the predicted one."""
        return self.measured.get(name, self.predicted[name])


@dataclass
class DeviceFront:
    """The front of one device (or one cost objective): ``points`` by increasing cost."""

    device: str
    quality: str
    cost: str
    budget: float | None
    points: list[FrontPoint]
    reference: tuple[float, float]
    hypervolume: float
    history: list[tuple[int, float]]
    notes: list[str] = field(default_factory=list)
    measured_front: list[int] | None = None  # indices into points, front recomputed on measured values


def label(cost: str) -> str:
    """``latency:cpu`` -> ``cpu``; other objectives keep their name."""
    return cost[len(LATENCY_PREFIX):] if cost.startswith(LATENCY_PREFIX) else cost


def device_fronts(trials: Trials, space, costs: Sequence[str] | None = None, history_points: int = 100) -> dict[str, DeviceFront]:
    """The front of every cost objective (default: each device's latency) against quality.

    Hypervolume is measured from a reference point at the worst feasible quality and at
    the budget (or the worst feasible cost), so that it grows as the search improves."""
    quality = trials.quality
    q_all = trials.column(quality)
    fronts = {}
    for cost in costs or trials.costs():
        c_all = trials.column(cost)
        ok = trials.feasible
        if not ok.any():
            fronts[label(cost)] = DeviceFront(label(cost), quality, cost, trials.budgets.get(cost), [], (np.nan, np.nan), 0.0, [],
                                              notes=["no feasible trial: every trial exceeds a budget"])
            continue
        ref = (float(q_all[ok].min()), float(trials.budgets.get(cost, c_all[ok].max())))
        feasible_idx = np.flatnonzero(ok)
        front = feasible_idx[pareto_front_2d(q_all[ok], c_all[ok])]
        points = []
        for i in front:
            arch = trials.archs[i] if trials.archs is not None else space.from_params(trials.params[i])
            points.append(FrontPoint(int(trials.numbers[i]), arch, dict(zip(trials.names, map(float, trials.values[i]))),
                                     flops=_maybe(space, "flops", arch), params=_maybe(space, "params", arch)))
        q_masked = np.where(ok, q_all, -np.inf)  # infeasible trials add nothing to the hypervolume
        fronts[label(cost)] = DeviceFront(label(cost), quality, cost, trials.budgets.get(cost), points, ref,
                                          hypervolume_2d(q_masked, c_all, *ref),
                                          hypervolume_history(q_masked, c_all, *ref, points=history_points))
    return fronts


def _maybe(space, method: str, arch) -> int | None:
    fn = getattr(space, method, None)
    return int(fn(arch)) if callable(fn) else None
