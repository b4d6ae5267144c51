"""Training a supernet into a folder (``supernet.pt`` every epoch, ``metrics.jsonl``) on a dataset:
``hwnas supernet train`` and the pipeline's train stage; under torchrun, one call per rank."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from hwnas.arguments import check_positive
from hwnas.data_wiring import calibration_batches, epoch_batches, load_for_space, probe_batches, split_batches
from hwnas.datasets import DatasetBundle
from search_space import SearchSpace, Supernet, UserError
from search_space.checkpoint import read_checkpoint
from search_space.train_dist import init_distributed, shutdown_distributed
from search_space.train_plan import plan_epochs
from search_space.training import TrainConfig, saved_config, subnet_evaluator, train_supernet

CHECKPOINT_NAME, METRICS_NAME = "supernet.pt", "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How one training runs besides its recipe (:class:`TrainConfig`): data, device, length,
    evaluation; the options of ``hwnas supernet train`` of the same names."""

    dataset: str
    data: str | None = None
    device: str = "auto"
    time_budget_min: float | None = None  # instead of config.epochs: as many as fit, planned now
    eval_every: int = 1
    eval_batch_size: int = 256
    calib_batches: int = 20
    resume: bool = False
    progress: bool = True


def train_supernet_folder(space: SearchSpace, out: str | Path, config: TrainConfig, run: RunSettings) -> list[dict]:
    """Train a supernet of ``space`` with ``config`` into folder ``out`` (resumed with
    ``run.resume``) and print its last epoch; returns the epochs' metrics (rank 0's under torchrun)."""
    for value, option in ((run.eval_every, "--eval-every"), (run.eval_batch_size, "--eval-batch-size"),
                          (run.calib_batches, "--calib-batches")):
        check_positive(value, option)
    ctx = init_distributed(run.device)
    try:
        return _train_ranks(space, Path(out), config, run, ctx)
    finally:
        shutdown_distributed(ctx)


def _train_ranks(space: SearchSpace, out: Path, config: TrainConfig, run: RunSettings, ctx) -> list[dict]:
    """The training on this process (one rank of several under torchrun)."""
    from search_space.io import check_out_dir

    if ctx.is_main:  # only rank 0 writes, here too: a file in the way or a read-only folder now, not after an epoch
        check_out_dir(out)
    if config.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {config.batch_size} cannot be split over {ctx.world_size} processes: "
                        "expected a global batch size divisible by --nproc_per_node")
    with ctx.main_first():  # rank 0 decodes and caches the dataset; the others then read its cache
        bundle = load_for_space(run.dataset, run.data, space, seed=config.seed, device=ctx.device)
    steps = len(bundle.train) // config.batch_size
    if steps < 1:
        raise UserError(f"--batch-size {config.batch_size} exceeds the {len(bundle.train)} training images; "
                        "expected a smaller batch")
    torch.manual_seed(config.seed)  # the supernet's initial weights
    supernet = Supernet(space)
    autocast = torch.bfloat16 if ctx.device.type == "cuda" else None
    evaluate = subnet_evaluator({"largest": space.largest(), "smallest": space.smallest()},
                                calibration_batches(bundle, run.eval_batch_size, ctx.device),
                                split_batches(bundle.val, bundle, run.eval_batch_size), run.calib_batches, autocast)
    meta = {"dataset": run.dataset, "data": str(Path(run.data).resolve()) if run.data else None,
            "val_fraction": 0.1, "split_seed": config.seed}
    intervals = {"eval_every": run.eval_every, "checkpoint_every": 1}
    time_limit_s = None
    if run.time_budget_min is not None:
        config, intervals = _budget_plan(space, config, run, bundle, steps, ctx, evaluate, out / CHECKPOINT_NAME)
        meta["plan"], time_limit_s = intervals, run.time_budget_min * 60
    history = train_supernet(supernet, epoch_batches(bundle, config.batch_size, config.seed, ctx.device, config.augment),
                             steps, config, out / CHECKPOINT_NAME, metrics_path=out / METRICS_NAME, resume=run.resume,
                             evaluate=evaluate, eval_every=intervals["eval_every"],
                             checkpoint_every=intervals["checkpoint_every"], meta=meta, dist=ctx,
                             progress=run.progress, time_limit_s=time_limit_s)
    if ctx.is_main and history:
        last = history[-1]
        accs = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("val_acc"))
        print(f"trained {last['epoch']} epochs: loss {last['loss']:.4f}  {accs}  -> {out / CHECKPOINT_NAME}")
        if last.get("stopped") == "time_limit":
            print(f"stopped at the {run.time_budget_min:g}-minute limit before the planned {config.epochs} epochs; "
                  "--resume finishes them", file=sys.stderr)
    return history


def _budget_plan(space: SearchSpace, config: TrainConfig, run: RunSettings, bundle: DatasetBundle, steps: int, ctx,
                 evaluate, checkpoint: Path) -> tuple[TrainConfig, dict]:
    """--time-budget-min: the epochs and intervals that fit it, measured now (under torchrun with
    DDP steps on every rank, so all ranks plan alike); a resumed run keeps the ones it was planned
    with (its schedule depends on them), also on another number of processes."""
    if not run.time_budget_min > 0:
        raise UserError(f"--time-budget-min {run.time_budget_min} is invalid; expected a positive number of minutes")
    if run.resume and checkpoint.exists():
        blob = read_checkpoint(checkpoint)
        plan = blob["meta"].get("plan") or {"eval_every": run.eval_every, "checkpoint_every": 1}
        return dataclasses.replace(config, epochs=saved_config(blob["train_state"])["epochs"]), plan
    plan = plan_epochs(space, config, probe_batches(bundle, config, ctx.device), steps, run.time_budget_min * 60,
                       ctx.device, evaluate, dist=ctx)  # under torchrun: timed on all ranks, one plan
    if run.progress and ctx.is_main:
        print(f"plan for {run.time_budget_min:g} min: {plan['epochs']} epochs of ~{plan['epoch_s_estimate']:.1f} s "
              f"(step {1000 * plan['step_s']:.1f} ms)", file=sys.stderr)
    return dataclasses.replace(config, epochs=plan["epochs"]), plan
