"""Objectives (scored on a batch of architectures at once) and budgets (upper limits on them).

Cheap objectives – a predictor, a latency table – are vectorised over the batch. Expensive
ones – measuring on a device, evaluating on the supernet – name the Ray resources they need
(``{"device:h100": 1}``), so with Ray they run as tasks on the node that owns the device.
"""

from __future__ import annotations

import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._errors import SearchError

DIRECTIONS = ("maximize", "minimize")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]+$")


@dataclass(frozen=True)
class Objective:
    """One objective: ``score(archs) -> array`` of one value per architecture.

    ``device`` marks a latency objective (its device gets a front); ``measured`` says
    whether the values are measurements rather than predictions; ``resources`` are the
    Ray resources a call needs (empty: run wherever the search runs). A call scores each
    distinct arch of a batch once; with ``cache`` (deterministic scores) values are also
    remembered across calls, since GA samplers propose the same archs again and again.
    """

    name: str
    direction: str
    score: Callable[[Sequence[Any]], Any]
    device: str | None = None
    unit: str = ""
    measured: bool = False
    resources: Mapping[str, float] = field(default_factory=dict)
    cache: bool = False
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SearchError(f"objective name {self.name!r} is invalid: expected letters, digits and _.:+-")
        if self.direction not in DIRECTIONS:
            raise SearchError(f"objective {self.name!r} direction {self.direction!r} is invalid: expected one of {list(DIRECTIONS)}")
        if not callable(self.score):
            raise SearchError(f"objective {self.name!r} score {self.score!r} is not callable: expected archs -> values")

    def __call__(self, archs: Sequence[Any]) -> np.ndarray:
        """Scores of ``archs`` as a float array, shape (len(archs),)."""
        keys = [_key(a) for a in archs]
        memo = self._memo
        todo = {}
        for k, a in zip(keys, archs):
            if k not in memo and k not in todo:
                todo[k] = a
        fresh = {}
        if todo:
            values = np.asarray(self.score(list(todo.values())), dtype=np.float64).reshape(-1)
            if values.shape[0] != len(todo):
                raise SearchError(f"objective {self.name!r} returned {values.shape[0]} values for {len(todo)} archs: "
                                  "expected one each")
            fresh = dict(zip(todo, values.tolist()))
        out = np.asarray([fresh[k] if k in fresh else memo[k] for k in keys], dtype=np.float64)
        if self.cache and fresh:
            if len(memo) + len(fresh) > MEMO_LIMIT:
                memo.clear()  # bounded memory; a GA's recent archs come back quickly
            memo.update(fresh)
        return out


MEMO_LIMIT = 1_000_000


def _key(arch) -> Any:
    """An arch as a dictionary key (its string when it is not hashable)."""
    try:
        hash(arch)
        return arch
    except TypeError:
        return str(arch)


def latency_name(device: str) -> str:
    """The objective name of latency on ``device``."""
    return f"latency:{device}"


# ---- objectives from the project's parts ----------------------------------------------------

@lru_cache(maxsize=None)
def _thread_controller():
    """threadpoolctl's view of the native thread pools loaded now (None without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def limit_native_threads(threads: int | None):
    """Context manager limiting OpenMP/BLAS pools to ``threads`` (None: unchanged)."""
    controller = _thread_controller() if threads is not None else None
    return controller.limit(limits=threads) if controller is not None else nullcontext()


class _PredictedAccuracy:
    """Mean predicted accuracy (a class, not a closure, so Ray can ship it)."""

    def __init__(self, predictor, space, threads: int | None):
        self.predictor, self.space, self.threads = predictor, space, threads

    def __call__(self, archs):
        with limit_native_threads(self.threads):
            return self.predictor.predict(self.space.encode_many(archs))[0]


def predicted_accuracy(predictor, space, name: str = "accuracy", threads: int | None = 1) -> Objective:
    """Accuracy predicted by ``predictor.predict(space.encode_many(archs))`` (maximised).

    ``threads`` caps native thread pools while predicting: a search's batches are small, and
    OpenMP workers that spin between them cost more than they give (the shipped GBT predictor
    on 100 archs: 137 ms of CPU with the default pool, 29 ms with one thread, on the 2-core
    development machine, 2026-11-30)."""
    return Objective(name, "maximize", _PredictedAccuracy(predictor, space, threads), cache=True)


def table_latency(table, device: str | None = None) -> Objective:
    """Latency in ms looked up in a latency table (``table.predict_many``), minimised."""
    device = device or table.device
    return Objective(latency_name(device), "minimize", table.predict_many, device=device, unit="ms", cache=True)


class _MeasureEach:
    """Calls ``measure(arch)`` per architecture (measurements are sequential on a device)."""

    def __init__(self, measure: Callable[[Any], float]):
        self.measure = measure

    def __call__(self, archs):
        return [self.measure(a) for a in archs]


class _TableMeasurement:
    def __init__(self, table, space):
        self.table, self.space = table, space

    def __call__(self, arch):
        return self.table.measure_arch(arch, self.space)


def measured_latency(table, space, device: str | None = None) -> Objective:
    """Latency in ms measured end to end on the device itself, with the table's settings.

    Needs the Ray resource ``device:NAME`` (one measurement at a time per device)."""
    device = device or table.device
    return Objective(latency_name(device), "minimize", _MeasureEach(_TableMeasurement(table, space)), device=device,
                     unit="ms", measured=True, resources={f"device:{device}": 1})


def measured_accuracy(evaluate: Callable[[Sequence[Any]], Sequence[float]], name: str = "accuracy",
                      resources: Mapping[str, float] | None = None) -> Objective:
    """Accuracy measured by ``evaluate(archs)`` (e.g. on the supernet with BN recalibrated)."""
    return Objective(name, "maximize", evaluate, measured=True, resources=dict(resources or {}))


class _PerArch:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, archs):
        return [self.fn(a) for a in archs]


def flops_objective(space) -> Objective:
    """FLOPs at batch 1 (``space.flops``), minimised."""
    return Objective("flops", "minimize", _PerArch(space.flops), unit="FLOPs", cache=True)


def params_objective(space) -> Objective:
    """Trainable parameters (``space.params``), minimised."""
    return Objective("params", "minimize", _PerArch(space.params), unit="params", cache=True)


# ---- budgets --------------------------------------------------------------------------------

_UNITS_MS = {"ms": 1.0, "us": 1e-3, "s": 1e3}
_BUDGET_RE = re.compile(r"^\s*([^=\s]+)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|us|s)?\s*$")


@dataclass(frozen=True)
class Budget:
    """An upper limit on a minimised objective: feasible when ``value <= limit``."""

    objective: str
    limit: float

    def __post_init__(self):
        if not (isinstance(self.limit, (int, float)) and math.isfinite(self.limit) and self.limit > 0):
            raise SearchError(f"budget on {self.objective!r} has limit {self.limit!r}: expected a positive finite number")


def parse_budget(text: str, devices: Sequence[str]) -> Budget:
    """``"h100=2.5ms"`` -> Budget on ``latency:h100`` of 2.5 (ms; ``us`` and ``s`` convert)."""
    m = _BUDGET_RE.match(text or "")
    if not m:
        raise SearchError(f"invalid budget {text!r}: expected DEVICE=LIMIT with a unit ms, us or s, e.g. cpu=5ms")
    device, number, unit = m.group(1), float(m.group(2)), m.group(3) or "ms"
    if device not in devices:
        raise SearchError(f"budget {text!r} names device {device!r}, which has no latency table: expected one of {sorted(devices)}")
    if number <= 0:
        raise SearchError(f"budget {text!r} is not positive: expected a latency above 0, e.g. {device}=5ms")
    return Budget(latency_name(device), number * _UNITS_MS[unit])


def check_budgets(budgets: Sequence[Budget], objectives: Sequence[Objective]) -> list[Budget]:
    """Budgets as a list; each must name a distinct minimised objective."""
    by_name = {o.name: o for o in objectives}
    seen = set()
    for b in budgets:
        if not isinstance(b, Budget):
            raise SearchError(f"budget {b!r} is not a search.Budget: expected Budget(objective, limit)")
        o = by_name.get(b.objective)
        if o is None:
            raise SearchError(f"budget on {b.objective!r} names no objective: expected one of {sorted(by_name)}")
        if o.direction != "minimize":
            raise SearchError(f"budget on {b.objective!r}: the objective is maximised; budgets are upper limits on minimised objectives")
        if b.objective in seen:
            raise SearchError(f"two budgets on {b.objective!r}: expected at most one per objective")
        seen.add(b.objective)
    return list(budgets)


def check_objectives(objectives: Sequence[Objective]) -> list[Objective]:
    """Objectives as a list: at least one, distinct names."""
    objectives = list(objectives)
    if not objectives:
        raise SearchError("no objectives: expected at least one search.Objective")
    for o in objectives:
        if not isinstance(o, Objective):
            raise SearchError(f"objective {o!r} is not a search.Objective")
    names = [o.name for o in objectives]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SearchError(f"objective names {sorted(dup)} appear more than once: expected distinct names")
    return objectives
