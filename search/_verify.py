"""Verification: re-measure each device's Pareto candidates on that device, re-evaluate their
accuracy (e.g. on the supernet), and recompute the front on the measured values."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ._fronts import DeviceFront
from ._loop import score_batch
from ._objectives import Objective
from ._pareto import pareto_front_2d, spread_candidates


def verify_fronts(fronts: Mapping[str, DeviceFront], *, measure: Mapping[str, Objective] | None = None,
                  evaluate: Objective | None = None, max_candidates: int = 12, use_ray: bool = False) -> None:
    """Fill ``measured`` values of up to ``max_candidates`` points per front, in place.

    ``measure[device]`` measures latency on that device (absent: unreachable, latency stays
    predicted); ``evaluate`` measures accuracy (absent: accuracy stays predicted), once per
    distinct architecture. Each front then gets ``measured_front``: the verified points
    that stay non-dominated (and within budget) on measured values where there are some."""
    measure = dict(measure or {})
    if use_ray:
        from ._ray import check_resources

        check_resources(list(measure.values()) + ([evaluate] if evaluate is not None else []))
    chosen = {d: spread_candidates(len(f.points), max_candidates) for d, f in fronts.items()}
    for d, front in fronts.items():
        idx = chosen[d]
        obj = measure.get(d)
        if not idx:
            continue
        if obj is None:
            front.notes.append(f"{d}: device not reachable from here; latencies are the table's predictions")
        else:
            values = score_batch([obj], [front.points[i].arch for i in idx], use_ray)[:, 0]
            for i, v in zip(idx, values):
                front.points[i].measured[front.cost] = float(v)
            front.notes.append(f"{d}: {len(idx)} of {len(front.points)} front points re-measured on the device")
    if evaluate is not None:
        unique = {}
        for d, front in fronts.items():
            for i in chosen[d]:
                unique.setdefault(str(front.points[i].arch), front.points[i].arch)
        accs = dict(zip(unique, score_batch([evaluate], list(unique.values()), use_ray)[:, 0])) if unique else {}
        for d, front in fronts.items():
            for i in chosen[d]:
                front.points[i].measured[front.quality] = float(accs[str(front.points[i].arch)])
            if chosen[d]:
                front.notes.append(f"{d}: accuracy of the re-measured points evaluated ({evaluate.name})")
    for d, front in fronts.items():
        idx = chosen[d]
        if not idx or not any(front.points[i].measured for i in idx):
            continue
        q = np.asarray([front.points[i].value(front.quality) for i in idx])
        c = np.asarray([front.points[i].value(front.cost) for i in idx])
        ok = c <= front.budget if front.budget is not None else np.ones(len(idx), bool)
        keep = np.flatnonzero(ok)[pareto_front_2d(q[ok], c[ok])]
        front.measured_front = [idx[j] for j in keep]
