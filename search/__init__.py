"""Multi-objective architecture search with Optuna, optionally distributed with Ray.

Objectives are scored a batch at a time; budgets are sampler constraints; the result is one
Pareto front per device, verifiable by measurement::

    objectives = [predicted_accuracy(predictor, space), table_latency(cpu_table), table_latency(gpu_table)]
    study = run_search(space, objectives, 20_000, budgets=[parse_budget("cpu=5ms", ["cpu", "gpu"])])
    trials = Trials.from_study(study)
    fronts = device_fronts(trials, space)
    verify_fronts(fronts, measure={"cpu": measured_latency(cpu_table, space)})
    write_report("out", trials, fronts, run={"sampler": "nsga2"})

Where the quality objective is expensive to measure, :func:`search_rounds` spends a budget of
measurements in rounds (measure, fit a predictor, search it, measure the most promising)::

    result = search_rounds(space, [measured_accuracy(evaluate)], [table_latency(cpu_table)], queries=200)
    fronts = result.fronts(space)  # measured points only

Works with any space following :class:`SearchSpaceProtocol` and any :class:`Objective`.
"""

from ._errors import SearchError
from ._fronts import DeviceFront, FrontPoint, Trials, device_fronts
from ._loop import score_batch
from ._objectives import (Budget, Objective, flops_objective, latency_name, measured_accuracy, measured_latency,
                          params_objective, parse_budget, predicted_accuracy, table_latency)
from ._pareto import hypervolume_2d, hypervolume_history, pareto_front_2d, pareto_layers_2d
from ._protocol import SearchSpaceProtocol
from ._ray import cluster_devices, init_ray
from ._report import format_fronts, front_json, plot_front, plot_hypervolume, write_report, write_summary
from ._rounds import RoundsResult, predicted_objective, search_rounds
from ._run import run_search
from ._samplers import SAMPLERS, make_sampler
from ._select import seed_archs, select_batch, space_extremes
from ._storage import open_storage, storage_url
from ._verify import verify_fronts

__all__ = [
    "Budget", "DeviceFront", "FrontPoint", "Objective", "RoundsResult", "SAMPLERS", "SearchError", "SearchSpaceProtocol", "Trials",
    "cluster_devices", "device_fronts", "flops_objective", "format_fronts", "front_json", "hypervolume_2d", "hypervolume_history",
    "init_ray", "latency_name", "make_sampler", "measured_accuracy", "measured_latency", "open_storage", "params_objective",
    "pareto_front_2d", "pareto_layers_2d", "parse_budget", "plot_front", "plot_hypervolume", "predicted_accuracy",
    "predicted_objective", "run_search", "score_batch", "search_rounds", "seed_archs", "select_batch", "space_extremes", "storage_url", "table_latency", "verify_fronts", "write_report", "write_summary",
]
