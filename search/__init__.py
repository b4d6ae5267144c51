"""Multi-objective architecture search with Optuna, optionally distributed with Ray.

Objectives are scored a batch at a time; budgets are sampler constraints; the result is one
Pareto front per device, verifiable by measurement::

    objectives = [predicted_accuracy(predictor, space), table_latency(cpu_table), table_latency(gpu_table)]
    study = run_search(space, objectives, 20_000, budgets=[parse_budget("cpu=5ms", ["cpu", "gpu"])])
    trials = Trials.from_study(study)
    fronts = device_fronts(trials, space)
    verify_fronts(fronts, measure={"cpu": measured_latency(cpu_table, space)})
    write_report("out", trials, fronts, run={"sampler": "nsga2"})

Each distinct architecture is scored once per study (a re-proposed one is answered from the
study's cache), so a budget of true evaluations is ``run_search(space, objectives,
max_evaluations=200)``. Where the quality objective is expensive to measure, :func:`search_rounds` spends a budget of
measurements in rounds (measure, fit a predictor, search it, measure the most promising)::

    result = search_rounds(space, [measured_accuracy(evaluate)], [table_latency(cpu_table)], queries=200)
    fronts = result.fronts(space)  # measured points only

Works with any space following :class:`SearchSpaceProtocol` and any :class:`Objective`.

Names load lazily: ``import search`` is instant; Optuna loads with the loop, samplers and
storages, Ray only when used, and nothing here imports torch.
"""

from search_space._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "_capacity": ["most_flops_within"],
    "_errors": ["SearchError"],
    "_fronts": ["DeviceFront", "FrontPoint", "Trials", "device_fronts"],
    "_loop": ["score_batch"],
    "_objectives": ["Budget", "Objective", "flops_objective", "latency_name", "measured_accuracy", "measured_latency",
                    "params_objective", "parse_budget", "predicted_accuracy", "table_latency"],
    "_pareto": ["hypervolume_2d", "hypervolume_history", "pareto_front_2d", "pareto_layers_2d"],
    "_protocol": ["SearchSpaceProtocol"],
    "_ray": ["cluster_devices", "init_ray"],
    "_report": ["format_fronts", "front_json", "plot_front", "plot_hypervolume", "write_report", "write_summary"],
    "_rounds": ["RoundsResult", "predicted_objective", "search_rounds"],
    "_run": ["run_search"],
    "_samplers": ["SAMPLERS", "budget_population", "make_sampler"],
    "_select": ["seed_archs", "select_batch", "space_extremes"],
    "_storage": ["open_storage", "storage_url"],
    "_urls": ["redact_url"],
    "_verify": ["verify_fronts"],
})
