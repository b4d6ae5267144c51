"""Command-line options shared by ``hwnas`` commands and experiment scripts (argparse helpers),
kept out of :mod:`hwnas.cli` so that scripts import a library module, not a command."""

from __future__ import annotations

import argparse

from search_space.errors import UserError


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Loss and schedule options, shared with experiments/train_cifar_gpu.py (see :func:`recipe_kwargs`)."""
    p.add_argument("--label-smoothing", type=float, default=0.1, metavar="S",
                   help="label smoothing of the largest subnet's loss (default 0.1)")
    p.add_argument("--logit-scale", type=float, default=1.0, metavar="S",
                   help="multiply logits by S before every loss; ResNet-9's 1/8 was worth 0.8 points on "
                   "JPEG-CIFAR-10 (default 1: off; predictions and exports are unaffected)")
    p.add_argument("--warmup-fraction", type=float, default=0.05, metavar="F",
                   help="linear warm-up over this fraction of all steps (default 0.05)")
    p.add_argument("--grad-clip", type=float, default=5.0, metavar="N",
                   help="clip the gradient norm at N; 0 = off (default 5)")


def recipe_kwargs(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` keywords of :func:`add_recipe_args`' options (``--grad-clip 0``: off)."""
    return dict(label_smoothing=args.label_smoothing, logit_scale=args.logit_scale,
                warmup_fraction=args.warmup_fraction, grad_clip=args.grad_clip or None)


def add_measurement_args(p, calib_batches: int = 20, calib_batch_size: int = 256, eval_batch_size: int = 1000) -> None:
    """Options of one subnet accuracy measurement (BN recalibration, then evaluation); experiment
    scripts pass their own defaults."""
    p.add_argument("--calib-batches", type=int, default=calib_batches,
                   help=f"training batches for BN recalibration (default {calib_batches})")
    p.add_argument("--calib-batch-size", type=int, default=calib_batch_size,
                   help=f"batch size of BN recalibration (default {calib_batch_size})")
    p.add_argument("--eval-batch-size", type=int, default=eval_batch_size,
                   help=f"batch size of evaluation (default {eval_batch_size})")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="measure on a fixed random subset of this many images of the split (default: all)")


def check_positive(value: int | None, option: str) -> None:
    """Reject a non-positive integer option (None: unset, allowed) in one line."""
    if value is not None and value < 1:
        raise UserError(f"{option} {value} is invalid; expected an integer >= 1")
