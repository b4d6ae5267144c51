"""Measuring accuracy datasets of a trained supernet: spread-sampled subnets, BN-recalibrated
and scored on a split (``hwnas predictor dataset``, the pipeline's accuracy stage, experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hwnas.arguments import check_positive
from hwnas.data_wiring import calibration_batches, load_for_space, split_batches
from hwnas.datasets import DatasetBundle, Split
from predictors import AccuracyDataset, build_accuracy_dataset
from search_space import Arch, UserError, checkpoint_hash, load_supernet
from search_space.train_dist import resolve_device

SPLITS = ("val", "test")


def random_subset(split: Split, limit: int | None, seed: int) -> Split:
    """A fixed random subset of ``limit`` samples (splits are sorted by class, so a prefix
    would measure a few classes only); the whole split when ``limit`` is None or larger."""
    if limit is None or limit >= len(split):
        return split
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])).to(split.x.device)
    return Split(split.x[idx], split.y[idx])


def measure_accuracy_dataset(checkpoint: str | Path, n: int | Sequence[Arch], out: str | Path, *,
                             dataset: str | None = None, data: str | None = None,
                             device: str | torch.device = "auto", split: str = "val", seed: int = 0,
                             measure_seed: int = 0, calib_batches: int = 20, calib_batch_size: int = 256,
                             eval_batch_size: int = 1000, eval_limit: int | None = None,
                             time_budget_s: float | None = None, channels_last: bool | None = None,
                             progress: bool = True, bundle: DatasetBundle | None = None,
                             extremes: bool = True) -> AccuracyDataset:
    """Measure ``n`` spread-sampled subnets (or the archs given) of ``checkpoint`` on ``split`` of
    its dataset (or the one named) and store them in ``out`` (resumable). ``seed`` picks the
    sample; ``measure_seed`` the calibration images and the eval subset (a measurement setting,
    recorded in the file's header). On CUDA, calibration and evaluation run under bf16 autocast.
    ``channels_last`` (default: on CUDA only, as training does) sets the memory layout.
    ``bundle`` (already on ``device``) skips loading the dataset again. ``extremes`` puts the
    space's corner archs among the ``n`` (off for a held-out set drawn beside a fit set)."""
    for value, option in ((n if isinstance(n, int) else None, "--n"), (calib_batches, "--calib-batches"),
                          (calib_batch_size, "--calib-batch-size"), (eval_batch_size, "--eval-batch-size"),
                          (eval_limit, "--eval-limit")):
        check_positive(value, option)
    if split not in SPLITS:
        raise UserError(f"split {split!r} is invalid; expected one of {list(SPLITS)}")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    supernet, blob = load_supernet(checkpoint)
    meta = blob.get("meta", {})
    dataset = dataset or meta.get("dataset")
    if dataset is None:
        raise UserError(f"checkpoint {str(checkpoint)!r} does not record its dataset; expected --dataset")
    data = data or (meta.get("data") if dataset == meta.get("dataset") else None)
    space = supernet.space
    # The split seed and fraction of training, so that 'val' holds images training never saw.
    if bundle is None:
        bundle = load_for_space(dataset, data, space, seed=meta.get("split_seed", 0),
                                val_fraction=meta.get("val_fraction", 0.1), device=device)
    eval_split = random_subset(getattr(bundle, split), eval_limit, measure_seed)
    if channels_last is None:
        channels_last = cuda
    fmt = torch.channels_last if channels_last else torch.preserve_format
    supernet.to(device, memory_format=fmt)
    settings = {"calib_batch_size": calib_batch_size, "eval_samples": len(eval_split), "measure_seed": measure_seed,
                "split_seed": meta.get("split_seed", 0), "val_fraction": meta.get("val_fraction", 0.1)}
    autocast = torch.bfloat16 if cuda else None
    # The outer autocast covers BN recalibration too (evaluate_archs autocasts only the scoring).
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        return build_accuracy_dataset(
            supernet, space, n, calibration_batches(bundle, calib_batch_size, device, measure_seed),
            split_batches(eval_split, bundle, eval_batch_size), out, checkpoint_hash=checkpoint_hash(checkpoint),
            dataset=dataset, split=split, num_calib_batches=calib_batches, autocast_dtype=autocast,
            settings=settings, seed=seed, time_budget_s=time_budget_s, progress=progress, extremes=extremes)


def update_accuracy_dataset(checkpoint: str | Path, n: int, out: str | Path, **measure) -> AccuracyDataset:
    """``hwnas predictor dataset``: measure ``out`` up to ``n`` subnets (resuming the file) with
    :func:`measure_accuracy_dataset`'s keyword arguments ``measure``, then print what it holds."""
    import sys
    import time

    from search_space.io import check_out_file

    start = time.monotonic()
    check_out_file(out)  # before any subnet is measured
    before = len(AccuracyDataset.load(out)) if Path(out).exists() else 0
    data = measure_accuracy_dataset(checkpoint, n, out, **measure)
    acc = data.accuracies()
    added, secs = len(data) - before, time.monotonic() - start
    summary = f"accuracy {acc.min():.4f}..{acc.max():.4f}" if len(acc) else "no records"
    print(f"{out}: {len(data)} subnets ({added} new in {secs:.0f} s), {summary}, "
          f"{data.header['dataset']}/{data.header['split']}, checkpoint {data.header['checkpoint_hash']}")
    if len(data) < n:
        print(f"stopped before {n}: re-run the same command to measure the rest", file=sys.stderr)
    return data
