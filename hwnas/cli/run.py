"""``hwnas run``: the whole pipeline from one config file."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from hwnas.cli._group import add_command
from hwnas.pipeline import STAGES, Pipeline
from hwnas.run_config import DEFAULT_CONFIG
from hwnas.stages import lock_run_dir
from search_space.io import check_out_dir


def register(sub) -> None:
    """Add ``hwnas run``."""
    p = add_command(
        sub, "run",
        description="Train the supernet, build a latency table for every local device, fit the accuracy "
        "predictor, search the Pareto fronts, verify them, export the best models to ONNX and write "
        "OUT/report.md. Finished stages are skipped when their inputs are unchanged, so an interrupted "
        "run resumes.")
    p.add_argument("--config", default=None, help=f"run config (YAML; default: the embedded quickstart, {DEFAULT_CONFIG.name})")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--from", dest="redo_from", choices=STAGES, help="redo this stage and every later one")
    p.add_argument("--until", choices=STAGES, help="stop after this stage (split a run over several sessions)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.time_budget_min=8.3 --set train.students=families "
                        "(VALUE read as YAML; repeatable; the run's stages see the changed config)")
    p.add_argument("--ray-address", default=None,
                   help="run on this Ray cluster (HOST:6379, ray://HOST:10001 or auto; default: the config's "
                        "cluster.ray_address): each device's table is built on the node started with "
                        "--resources='{\"device:NAME\": 1}', the accuracy datasets in shards, the search with "
                        "cluster.workers workers on cluster.storage")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from hwnas.run_report import console_summary

    # One run per folder: a second one is refused in one line, before it writes anything there
    # (Pipeline writes an inline space to OUT/space.json); a new folder is locked once made.
    check_out_dir(args.out)  # a file in the way, a read-only folder: its own one-line error, before the lock file
    with lock_run_dir(Path(args.out)) if Path(args.out).is_dir() else nullcontext():
        pipeline = Pipeline(args.config, args.out, args.redo_from, args.until, args.ray_address, args.overrides)
        with pipeline.runner.locked():
            result = pipeline.run()
    print(console_summary(pipeline) if result.name == "report.md" else f"done up to --until {args.until}: {result}")
    return 0
